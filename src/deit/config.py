"""Training configuration: nested dataclasses, YAML presets, command-line overrides.

`configs/*.yaml` -> flags (the official DeiT `main.py` names where the concept exists) -> `TrainConfig`. A YAML file
holds the sections below (`model:`, `data:`, `aug:`, `optim:`, `distill:`, `run:`) with the field names below.
Unknown keys and flags are errors. Every value is checked for its type and range as it is read, from YAML or a
flag alike, before any work starts: a section's `__post_init__` first makes each field its annotated type (a
whole number stays whole, `lr: 1e-3`, which YAML reads as a string, becomes a float, NaN is refused), then checks
the ranges. `TrainConfig.explicit` records which fields the user set, so that a built-in data set's defaults (small
images want gentler augmentation) fill only the rest.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .data.transforms import MIXUP_MODES, REMODES, Recipe
from .distill.attention import ATTENTION_LOSSES, parse_blocks
from .distill.cache import DTYPES as CACHE_DTYPES
from .distill.losses import DISTILLATION_TYPES
from .distributed import PRECISIONS
from .models.metadata import INTENSITIES, INTERPOLATIONS
from .models.metadata import show_value as _show


def _as_type(name: str, value, annotation: str):
    """`value` as the field's annotated type ("int", "float | None", ...); ValueError naming the field otherwise."""
    kinds = [part.strip() for part in annotation.split("|")]
    kind = next(k for k in kinds if k != "None")
    if value is None:
        if "None" in kinds:
            return None
        raise ValueError(f"{name} must be given (a {_KIND_NAMES[kind]}), not null")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}={_show(value)} must be true or false")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"{name}={_show(value)} must be a string")
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string; a number written as text is a number
        try:
            value = int(value) if kind == "int" else float(value)
        except ValueError:
            raise ValueError(f"{name}={_show(value)} must be a {_KIND_NAMES[kind]}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={_show(value)} must be a {_KIND_NAMES[kind]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={_show(value)} must be a finite number")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name}={_show(value)} must be a whole number")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}={_show(value)} is too large") from None


_KIND_NAMES = {"int": "whole number", "float": "number", "str": "string", "bool": "true or false"}


def _check(section: str, config, rules) -> None:
    """Make every field of a config section its annotated type, then check `rules(config)`, a list of
    (field, holds, rule): the first that does not hold is a ValueError naming the field, its value and the rule."""
    for f in fields(config):
        setattr(config, f.name, _as_type(f"{section}.{f.name}", getattr(config, f.name), f.type))
    for name, holds, rule in rules(config):
        if not holds:
            raise ValueError(f"{section}.{name}={_show(getattr(config, name))} {rule}")


def _in(low: float, value, high: float) -> bool:
    return value is None or low <= value <= high


def _one_of(values) -> str:
    """The rule for a field with a list of allowed values: "must be a, b or c"."""
    values = list(values)
    return f"must be {', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else f"must be {values[0]}"


def known_architecture(name: str) -> bool:
    """A deit model, `small_cnn`, or a timm / torchvision architecture."""
    from .models import MODELS

    if name in MODELS or name == "small_cnn":
        return True
    import timm
    import torchvision

    return timm.is_model(name) or name in torchvision.models.list_models()


def check_policy(aa: str | None, batch_aug: bool) -> None:
    """A timm augmentation policy string (RandAugment, AugMix or AutoAugment), as timm parses it."""
    if aa is None or aa == "none":
        return
    from timm.data import auto_augment

    try:
        if aa.startswith("rand"):
            auto_augment.rand_augment_transform(aa, {"translate_const": 100})
        elif aa.startswith("augmix"):
            auto_augment.augment_and_mix_transform(aa, {"translate_const": 100})
        else:
            auto_augment.auto_augment_transform(aa, {"translate_const": 100})
    except Exception:
        raise ValueError(
            f"aug.aa={_show(aa)} is not a timm augmentation policy; e.g. rand-m9-mstd0.5-inc1 "
            "(RandAugment), augmix-m5-w4-d2 or original (AutoAugment), or none"
        ) from None
    if batch_aug and not aa.startswith("rand"):
        raise ValueError(f"aug.aa={_show(aa)}: batch augmentation takes RandAugment policies ('rand-m9-...')")


@dataclass
class ModelConfig:
    model: str = "deit_tiny_patch16_224"
    """A deit name (`deit models`), `small_cnn`, or a timm / torchvision architecture (to train a CNN teacher)."""
    input_size: int | None = None
    """Image side in pixels; None: the model's own (DeiT) or the data set's (CNN)."""
    drop_path: float = 0.1
    """Stochastic depth at the last block (linear from 0). The paper: training fails to converge without it."""
    finetune: str | None = None
    """Weights to start from: pos_embed resized to the input size, a head of another class count replaced."""
    layer_scale_init: float | None = None
    """Where a DeiT III's LayerScale starts; None: the model's own (1e-4, as the official models_v2.py)."""

    def __post_init__(self):
        _check(
            "model",
            self,
            lambda c: [
                ("drop_path", 0.0 <= c.drop_path < 1.0, "must be in [0, 1)"),
                (
                    "layer_scale_init",
                    c.layer_scale_init is None or 0.0 <= c.layer_scale_init <= 100.0,
                    "must be between 0 and 100",
                ),
                ("input_size", _in(8, c.input_size, 4096), "must be between 8 and 4096 px"),
                (
                    "model",
                    known_architecture(c.model),
                    "is not a deit model (`deit models` lists them), small_cnn, nor a timm or torchvision architecture",
                ),
            ],
        )


@dataclass
class DataConfig:
    data_set: str = "imagenet"
    """imagenet or folder (an ImageFolder tree with train/ and val/), mnist5k, digits, fashion-mnist (4,000 / 1,000),
    fashion-mnist-full (60,000 / 10,000), cifar10, cifar100, wds (WebDataset shards)."""
    data_path: str | None = None
    """Root of the data: train/ and val/ folders, torchvision's CIFAR or FashionMNIST files (Fashion-MNIST's default:
    where Debian's dataset-fashion-mnist puts them). The digit sets ship in packages. For wds: a folder of shards
    with their index.json (deit shard), or a brace pattern of the training shards (train-{000000..000146}.tar)."""
    val_path: str | None = None
    """wds: the validation shards (a pattern, or a folder with an index), when data_path is a pattern; by default
    the val split of the index beside data_path's shards."""
    shuffle_buffer: int = 2000
    """wds: samples each loader worker holds to shuffle its stream (their encoded bytes: ~110 KB each on ImageNet)."""
    grayscale: bool = False
    """Read folder images as 1 channel (a 1-channel model); built-in digit sets are always 1 channel."""
    intensity: str = "minmax"
    """How images of more than 8 bits (16-bit PNG or TIFF, float TIFF) become the 8-bit images the recipe takes:
    minmax stretches each image's own range to 0-255; full maps the type's whole range (16-bit 0-65535, float 0-1)."""
    labels_per_class: int | None = None
    """Train on only the first N labelled images of each class (a fixed subset): the small-data regime."""
    unlabelled: bool = False
    """With labels_per_class: keep the other training images too, without their labels. Both heads learn from the
    teacher on those (the class head takes its decision as the label), from the N labels per class on the rest."""
    repeat: int = 1
    """Passes over the training images in one epoch (each in its own random view): gives a small set, e.g. the
    labelled images alone, as many steps per epoch as a larger one."""
    num_workers: int = 4
    """DataLoader worker processes per training process."""
    pin_mem: bool = True
    """Pinned host memory, for faster copies to the GPU."""

    def __post_init__(self):
        from .data.datasets import DATA_SETS, canonical_name

        def known(name: str) -> bool:
            try:
                return bool(canonical_name(name))
            except ValueError:
                return False

        _check(
            "data",
            self,
            lambda c: [
                (
                    "data_set",
                    known(c.data_set),
                    f"is not a data set; choose one of {', '.join(DATA_SETS)}",
                ),
                ("labels_per_class", _in(1, c.labels_per_class, 10**9), "must be >= 1"),
                ("repeat", 1 <= c.repeat <= 10**6, "must be >= 1"),
                ("num_workers", 0 <= c.num_workers <= 256, "must be between 0 and 256"),
                ("shuffle_buffer", 0 <= c.shuffle_buffer <= 10**7, "must be between 0 (no shuffle) and 10,000,000"),
                (
                    "val_path",
                    c.val_path is None or (known(c.data_set) and canonical_name(c.data_set) == "wds"),
                    "is read with --data-set wds only",
                ),
                (
                    "repeat",
                    c.repeat == 1 or not known(c.data_set) or canonical_name(c.data_set) != "wds",
                    "is for sets held whole (folders, built-ins); shards are read once per epoch, as a stream",
                ),
                ("intensity", c.intensity in INTENSITIES, _one_of(INTENSITIES)),
            ],
        )


@dataclass
class AugConfig(Recipe):
    """The DeiT recipe (paper, Table 9) by default; built-in small-image data sets bring gentler values. The
    per-image augmentation's fields are `data.transforms.Recipe`'s (an AugConfig is one); the rest follow."""

    smoothing: float = 0.1
    """Label smoothing."""
    bce_loss: bool = False
    """The class loss as binary cross-entropy, each class of a (mixed) target present counted as 1 (DeiT III)."""
    repeated_aug: bool = True
    """Repeated augmentation (3 augmented copies of each image per epoch, spread over processes) under DDP."""
    mixup: float = 0.8
    """Mixup alpha; 0 disables."""
    cutmix: float = 1.0
    """CutMix alpha; 0 disables."""
    mixup_prob: float = 1.0
    """Probability of applying Mixup or CutMix to a batch."""
    mixup_switch_prob: float = 0.5
    """Probability of CutMix rather than Mixup when both are on."""
    mixup_mode: str = "batch"
    eval_crop_ratio: float = 0.875
    """Eval: resize to size / ratio, then center-crop to size."""
    batch_aug: bool = False
    """Augment whole batches as tensors on the training device (a GPU, or the CPU for small images). Built-in data
    sets are held in memory: no loader processes at all. Image files: loader processes decode, crop and flip; the
    rest runs on the batch. Same recipe; a batch replays from (seed, epoch, process, step)."""

    def __post_init__(self):
        _check(
            "aug",
            self,
            lambda c: [
                ("crop_scale", 0.0 < c.crop_scale <= 1.0, "must be in (0, 1]"),
                ("hflip", 0.0 <= c.hflip <= 1.0, "must be in [0, 1]"),
                ("color_jitter", 0.0 <= c.color_jitter <= 10.0, "must be in [0, 10]"),
                ("smoothing", 0.0 <= c.smoothing < 1.0, "must be in [0, 1)"),
                ("train_interpolation", c.train_interpolation in INTERPOLATIONS, _one_of(INTERPOLATIONS)),
                ("reprob", 0.0 <= c.reprob <= 1.0, "must be in [0, 1]"),
                ("remode", c.remode in REMODES, _one_of(REMODES)),
                ("recount", 1 <= c.recount <= 64, "must be between 1 and 64"),
                ("mixup", 0.0 <= c.mixup <= 1e3, "must be >= 0 (0 disables it)"),
                ("cutmix", 0.0 <= c.cutmix <= 1e3, "must be >= 0 (0 disables it)"),
                ("mixup_prob", 0.0 <= c.mixup_prob <= 1.0, "must be in [0, 1]"),
                ("mixup_switch_prob", 0.0 <= c.mixup_switch_prob <= 1.0, "must be in [0, 1]"),
                ("mixup_mode", c.mixup_mode in MIXUP_MODES, _one_of(MIXUP_MODES)),
                ("eval_crop_ratio", 0.0 < c.eval_crop_ratio <= 1.0, "must be in (0, 1]"),
                ("batch_aug", not (c.batch_aug and c.three_augment), "has no 3-Augment: use RandAugment (aug.aa)"),
                ("batch_aug", not (c.batch_aug and c.src), "crops with RandomResizedCrop: drop --src or --batch-aug"),
            ],
        )
        check_policy(self.aa, self.batch_aug)

    @property
    def mixup_active(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)

    def recipe(self) -> Recipe:
        """The per-image augmentation these settings describe, for both pipelines (a plain Recipe: the rest of the
        config does not travel with it)."""
        return Recipe(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)})

    def mixup_settings(self) -> dict | None:
        """Mixup/CutMix's settings (`data.transforms.mixup_cutmix`'s arguments, less smoothing and classes); None
        when off."""
        if not self.mixup_active:
            return None
        return {
            "mixup": self.mixup,
            "cutmix": self.cutmix,
            "prob": self.mixup_prob,
            "switch_prob": self.mixup_switch_prob,
            "mode": self.mixup_mode,
        }


@dataclass
class OptimConfig:
    opt: str = "adamw"
    """Optimizer name in timm's factory."""
    lr: float = 5e-4
    """Learning rate for a total batch of 512: scaled by total batch / 512 unless unscale_lr."""
    unscale_lr: bool = False
    weight_decay: float = 0.05
    """Not applied to norms, biases, tokens and pos_embed."""
    opt_eps: float = 1e-8
    momentum: float = 0.9
    clip_grad: float | None = None
    """Gradient norm clipping; null for none (the DeiT recipe)."""
    warmup_epochs: float = 5
    """Linear warmup from warmup_lr, then a cosine down to min_lr at the last epoch (updated every step)."""
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    accum_iter: int = 1
    """Gradient accumulation: optimizer steps every accum_iter batches (total batch grows alike)."""
    model_ema: bool = True
    model_ema_decay: float = 0.99996
    """Per optimizer step; the paper's value suits ~375k steps. Short runs want 0.99-0.999."""

    def __post_init__(self):
        from timm.optim import list_optimizers

        _check(
            "optim",
            self,
            lambda c: [
                (
                    "opt",
                    c.opt.lower().removeprefix("lookahead_") in list_optimizers(),
                    "is not an optimizer of timm's factory (adamw, sgd, lamb, ...)",
                ),
                ("lr", 0.0 < c.lr <= 1e3, "must be > 0"),
                ("weight_decay", 0.0 <= c.weight_decay <= 1e3, "must be >= 0"),
                ("opt_eps", 0.0 < c.opt_eps <= 1.0, "must be in (0, 1]"),
                ("momentum", 0.0 <= c.momentum <= 1.0, "must be in [0, 1]"),
                ("clip_grad", c.clip_grad is None or c.clip_grad > 0, "must be > 0 (or null for none)"),
                ("warmup_epochs", 0.0 <= c.warmup_epochs <= 10**6, "must be >= 0"),
                ("warmup_lr", 0.0 <= c.warmup_lr <= 1e3, "must be >= 0"),
                ("min_lr", 0.0 <= c.min_lr <= 1e3, "must be >= 0"),
                ("accum_iter", 1 <= c.accum_iter <= 10**6, "must be >= 1"),
                ("model_ema_decay", 0.0 < c.model_ema_decay < 1.0, "must be in (0, 1)"),
            ],
        )


@dataclass
class DistillConfig:
    distillation_type: str = "none"
    """none, soft (KL with temperature) or hard (teacher argmax), through the distillation token if there is one."""
    teacher_model: str = "regnety_160"
    """timm / torchvision architecture name; ignored when teacher_path is a deit checkpoint."""
    teacher_path: str | None = None
    """Local teacher weights: timm/torchvision state dict, or a checkpoint written by `deit train`."""
    distillation_alpha: float = 0.5
    """total = (1 - alpha) * base + alpha * distillation."""
    distillation_tau: float = 1.0
    """Soft distillation temperature."""
    attn_distillation_weight: float = 0.0
    """beta: total += beta * distance between student and teacher attention maps; 0 turns it off."""
    attn_distillation_layers: str = "-1"
    """Student blocks whose class-token attention is distilled: -1, or a list such as 2,3 (on the command line
    --attn-distillation-layers=-2,-1); a ViT teacher gives its maps at the same blocks."""
    attn_distillation_loss: str = "kl"
    """kl: KL(teacher || student) between maps as distributions; mse: between L2-normalised maps."""
    teacher_cache: str | None = None
    """A folder of the teacher's outputs on this run's views (`deit cache-teacher`): the teacher runs once for all
    students. Made first (needs teacher_path) when absent or unfinished; refused if made for another run."""
    teacher_cache_topk: int = 10
    """Logits kept per view: soft distillation is exact when this is at least the class count; hard needs 1."""
    teacher_cache_dtype: str = "float16"
    """float16 or float32: precision of the stored logits and maps."""

    def __post_init__(self):
        layers = self.attn_distillation_layers  # YAML may give the blocks as a number or a list of numbers
        if isinstance(layers, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            self.attn_distillation_layers = ",".join(map(str, layers))
        elif isinstance(layers, int) and not isinstance(layers, bool):
            self.attn_distillation_layers = str(layers)
        _check(
            "distill",
            self,
            lambda c: [
                ("distillation_type", c.distillation_type in DISTILLATION_TYPES, _one_of(DISTILLATION_TYPES)),
                (
                    "teacher_model",
                    known_architecture(c.teacher_model),
                    "is not small_cnn, a deit model, nor a timm or torchvision architecture",
                ),
                ("distillation_alpha", 0.0 <= c.distillation_alpha <= 1.0, "must be in [0, 1]"),
                ("distillation_tau", 0.0 < c.distillation_tau <= 1e3, "must be > 0"),
                ("attn_distillation_weight", 0.0 <= c.attn_distillation_weight <= 1e3, "must be >= 0"),
                ("attn_distillation_loss", c.attn_distillation_loss in ATTENTION_LOSSES, _one_of(ATTENTION_LOSSES)),
                ("teacher_cache_topk", 1 <= c.teacher_cache_topk <= 10**6, "must be >= 1"),
                ("teacher_cache_dtype", c.teacher_cache_dtype in CACHE_DTYPES, _one_of(CACHE_DTYPES)),
            ],
        )
        parse_blocks(self.attn_distillation_layers)

    @property
    def needs_teacher(self) -> bool:
        return self.distillation_type != "none" or self.attn_distillation_weight > 0


@dataclass
class RunConfig:
    epochs: int = 300
    batch_size: int = 64
    """Per process (GPU); the total batch is batch_size x processes x accum_iter."""
    seed: int = 0
    output_dir: str | None = None
    """Where the config, log.jsonl, checkpoints and TensorBoard files go; null writes nothing."""
    resume: str | None = None
    """A checkpoint.pth of this run (or its folder) to continue from."""
    eval: bool = False
    """Evaluate the (finetune/resume) weights and stop."""
    device: str = "auto"
    """auto (cuda when present), cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), bf16 (autocast) or fp32."""
    compile: bool = False
    """torch.compile the model."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to output_dir/tensorboard."""

    def __post_init__(self):
        import re

        _check(
            "run",
            self,
            lambda c: [
                ("epochs", 1 <= c.epochs <= 10**6, "must be between 1 and 1000000"),
                ("batch_size", 1 <= c.batch_size <= 10**7, "must be >= 1"),
                ("seed", 0 <= c.seed < 2**63, "must be a whole number >= 0"),
                (
                    "device",
                    re.fullmatch(r"auto|cpu|cuda(:\d+)?", c.device) is not None,
                    "must be auto, cpu, cuda or cuda:N",
                ),
                ("precision", c.precision in PRECISIONS, _one_of(PRECISIONS)),
            ],
        )


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "aug": AugConfig,
    "optim": OptimConfig,
    "distill": DistillConfig,
    "run": RunConfig,
}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run: RunConfig = field(default_factory=RunConfig)
    explicit: frozenset = frozenset()
    """Dotted names of the fields the user set (YAML or flags)."""

    def __post_init__(self):
        if self.data.unlabelled and self.data.labels_per_class is None:
            raise ValueError(
                "data.unlabelled needs data.labels_per_class (which images keep their labels); add --labels-per-class N"
            )
        if self.data.unlabelled and not self.distill.needs_teacher:
            raise ValueError(
                "data.unlabelled: images without labels teach only through a teacher; give --distillation-type "
                "hard or soft (with --teacher-path), or --attn-distillation-weight, or drop --unlabelled"
            )
        if self.data.unlabelled and self.aug.bce_loss:
            raise ValueError(
                "aug.bce_loss: images without labels have no class targets to binarise; drop --bce-loss or --unlabelled"
            )
        if self.aug.mixup_active and self.run.batch_size % 2:
            raise ValueError(
                f"run.batch_size={self.run.batch_size} is odd, but Mixup/CutMix pair each image with another in "
                f"the batch; use {self.run.batch_size + 1}, or turn them off with --mixup 0 --cutmix 0"
            )

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, values: dict, explicit: set[str] | frozenset = frozenset()) -> TrainConfig:
        """Build from nested {section: {field: value}}; unknown sections or fields raise ValueError."""
        unknown = set(values) - set(SECTIONS)
        if unknown:
            shown = sorted(map(_show, unknown))
            raise ValueError(f"unknown config section(s) {', '.join(shown)}; sections are: {', '.join(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            given = values.get(name)
            given = {} if given is None else given
            if not isinstance(given, dict):
                raise ValueError(f"config section {name} must be a mapping of field: value, not {_show(given)}")
            known = {f.name for f in fields(section_cls)}
            for key in given:
                if key not in known:
                    close = difflib.get_close_matches(str(key), known, n=1)
                    hint = f" (did you mean {name}.{close[0]}?)" if close else ""
                    keys = ", ".join(sorted(known))
                    shown = key if isinstance(key, str) else _show(key)
                    raise ValueError(f"unknown config key {name}.{shown}{hint}; keys of {name}: {keys}")
            sections[name] = section_cls(**given)
        return cls(**sections, explicit=frozenset(explicit))

    def with_defaults(self, defaults: dict[str, object]) -> TrainConfig:
        """A copy where each dotted field in `defaults` takes its value unless the user set that field."""
        values = self.to_dict()
        for dotted, value in defaults.items():
            if dotted not in self.explicit:
                section, key = dotted.split(".")
                values[section][key] = value
        return TrainConfig.from_dict(values, self.explicit)


MAX_YAML_BYTES = 2**20  # a preset is a few KB
MAX_YAML_VALUES = 100_000  # values in the document with its aliases expanded: a preset has about a hundred


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size:,} bytes, over the {MAX_YAML_BYTES:,} a config may take")
    try:
        values = yaml.safe_load(path.read_text())
        if _values_over(values, MAX_YAML_VALUES):  # aliases of aliases name 10^9 values in a few lines
            raise ValueError(
                f"{path} holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) are expanded; a config "
                "needs far fewer"
            )
    except RecursionError:
        raise ValueError(f"{path} nests its values too deeply to be read") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (not UTF-8); a preset is YAML text") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of sections (model:, data:, ...)")
    return values


def _values_over(value, budget: int) -> bool:
    """Whether `value` holds more than `budget` values, counting a shared (aliased) one each time it appears; stops
    counting at the budget."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def merge(base: dict, overrides: dict[str, object]) -> tuple[dict, set[str]]:
    """Apply dotted overrides ("optim.lr": 1e-3) to nested values; returns the values and every dotted name set."""
    for section, values in base.items():
        if values is not None and not isinstance(values, dict):
            raise ValueError(f"config section {_show(section)} must be a mapping of field: value, not {_show(values)}")
    merged = {section: dict(values or {}) for section, values in base.items()}
    explicit = {f"{section}.{key}" for section, values in merged.items() for key in values}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        merged.setdefault(section, {})[key] = value
        explicit.add(dotted)
    return merged, explicit


@functools.cache
def field_docs(section_cls) -> dict[str, str]:
    """Field docstrings (the string literal after each field), for --help texts (read once per process: finding a
    class's source parses its whole module)."""
    import ast
    import inspect
    import textwrap

    docs = {}
    for cls in reversed([c for c in section_cls.__mro__ if dataclasses.is_dataclass(c)]):  # a base's fields too
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
            ):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs
