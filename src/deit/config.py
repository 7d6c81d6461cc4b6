"""Training configuration: nested dataclasses, YAML presets, command-line overrides.

`configs/*.yaml` -> flags (the official DeiT `main.py` names where the concept exists) -> `TrainConfig`. A YAML file
holds the sections below (`model:`, `data:`, `aug:`, `optim:`, `distill:`, `run:`) with the field names below.
Unknown keys and flags are errors. `TrainConfig.explicit` records which fields the user set, so that a built-in
data set's defaults (small images want gentler augmentation) fill only the rest.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml


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

    def __post_init__(self):
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"model.drop_path={self.drop_path} must be in [0, 1)")
        if self.input_size is not None and self.input_size < 8:
            raise ValueError(f"model.input_size={self.input_size} is too small (at least 8 px)")


@dataclass
class DataConfig:
    data_set: str = "imagenet"
    """imagenet or folder (an ImageFolder tree with train/ and val/), mnist5k, digits, cifar10, cifar100."""
    data_path: str | None = None
    """Root of the data: train/ and val/ folders, or torchvision's CIFAR files. Built-ins ship in packages."""
    grayscale: bool = False
    """Read folder images as 1 channel (a 1-channel model); built-in digit sets are always 1 channel."""
    labels_per_class: int | None = None
    """Train on only the first N labelled images of each class (a fixed subset): the small-data regime."""
    unlabelled: bool = False
    """With labels_per_class: keep the other training images too, without their labels. The class head learns from
    the N labelled per class; the teacher's outputs on every image teach the distillation losses."""
    num_workers: int = 4
    """DataLoader worker processes per training process."""
    pin_mem: bool = True
    """Pinned host memory, for faster copies to the GPU."""

    def __post_init__(self):
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ValueError(f"data.labels_per_class={self.labels_per_class} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")


@dataclass
class AugConfig:
    """The DeiT recipe (paper, Table 9) by default; built-in small-image data sets bring gentler values."""

    crop_scale: float = 0.08
    """Smallest area fraction kept by RandomResizedCrop."""
    hflip: float = 0.5
    """Horizontal flip probability (0 for digits)."""
    color_jitter: float = 0.3
    aa: str | None = "rand-m9-mstd0.5-inc1"
    """RandAugment policy in timm's notation; null for none."""
    three_augment: bool = False
    """3-Augment (grayscale, solarize or blur, one at a time) instead of RandAugment."""
    smoothing: float = 0.1
    """Label smoothing."""
    train_interpolation: str = "bicubic"
    reprob: float = 0.25
    """Random erasing probability."""
    remode: str = "pixel"
    recount: int = 1
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
        checks = [
            (0.0 < self.crop_scale <= 1.0, f"aug.crop_scale={self.crop_scale} must be in (0, 1]"),
            (0.0 <= self.hflip <= 1.0, f"aug.hflip={self.hflip} must be in [0, 1]"),
            (0.0 <= self.smoothing < 1.0, f"aug.smoothing={self.smoothing} must be in [0, 1)"),
            (0.0 <= self.reprob <= 1.0, f"aug.reprob={self.reprob} must be in [0, 1]"),
            (self.mixup >= 0 and self.cutmix >= 0, "aug.mixup and aug.cutmix must be >= 0"),
            (0.0 < self.eval_crop_ratio <= 1.0, f"aug.eval_crop_ratio={self.eval_crop_ratio} must be in (0, 1]"),
            (self.mixup_mode in ("batch", "pair", "elem"), f"aug.mixup_mode={self.mixup_mode!r}: batch, pair or elem"),
            (self.remode in ("pixel", "rand", "const"), f"aug.remode={self.remode!r}: pixel, rand or const"),
            (not (self.batch_aug and self.three_augment), "aug.batch_aug has no 3-Augment: use RandAugment (aug.aa)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def mixup_active(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


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
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be > 0")
        if self.accum_iter < 1:
            raise ValueError(f"optim.accum_iter={self.accum_iter} must be >= 1")
        if not 0.0 < self.model_ema_decay < 1.0:
            raise ValueError(f"optim.model_ema_decay={self.model_ema_decay} must be in (0, 1)")
        if self.warmup_epochs < 0:
            raise ValueError(f"optim.warmup_epochs={self.warmup_epochs} must be >= 0")


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
        if self.distillation_type not in ("none", "soft", "hard"):
            raise ValueError(f"distill.distillation_type={self.distillation_type!r}: none, soft or hard")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distill.distillation_alpha={self.distillation_alpha} must be in [0, 1]")
        if self.distillation_tau <= 0:
            raise ValueError(f"distill.distillation_tau={self.distillation_tau} must be > 0")
        if self.attn_distillation_weight < 0:
            raise ValueError(f"distill.attn_distillation_weight={self.attn_distillation_weight} must be >= 0")
        if self.teacher_cache_topk < 1:
            raise ValueError(f"distill.teacher_cache_topk={self.teacher_cache_topk} must be >= 1")
        if self.teacher_cache_dtype not in ("float16", "float32"):
            raise ValueError(f"distill.teacher_cache_dtype={self.teacher_cache_dtype!r}: float16 or float32")
        if self.attn_distillation_loss not in ("kl", "mse"):
            raise ValueError(f"distill.attn_distillation_loss={self.attn_distillation_loss!r}: kl or mse")
        from .distill.attention import parse_layers

        parse_layers(self.attn_distillation_layers)

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
        if self.epochs < 1:
            raise ValueError(f"run.epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"run.batch_size={self.batch_size} must be >= 1")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"run.precision={self.precision!r}: auto, bf16 or fp32")


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
            raise ValueError("data.unlabelled needs data.labels_per_class (which images keep their labels); "
                             "add --labels-per-class N")  # fmt: skip
        if self.data.unlabelled and not self.distill.needs_teacher:
            raise ValueError(
                "data.unlabelled: images without labels teach only through a teacher; give --distillation-type "
                "hard or soft (with --teacher-path), or --attn-distillation-weight, or drop --unlabelled"
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
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; sections are: {', '.join(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            given = values.get(name) or {}
            if not isinstance(given, dict):
                raise ValueError(f"config section {name!r} must be a mapping of field: value")
            known = {f.name for f in fields(section_cls)}
            for key in given:
                if key not in known:
                    close = difflib.get_close_matches(key, known, n=1)
                    hint = f" (did you mean {name}.{close[0]}?)" if close else ""
                    raise ValueError(f"unknown config key {name}.{key}{hint}; keys of {name}: {', '.join(sorted(known))}")
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


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of sections (model:, data:, ...)")
    return values


def merge(base: dict, overrides: dict[str, object]) -> tuple[dict, set[str]]:
    """Apply dotted overrides ("optim.lr": 1e-3) to nested values; returns the values and every dotted name set."""
    merged = {section: dict(values or {}) for section, values in base.items()}
    explicit = {f"{section}.{key}" for section, values in merged.items() if isinstance(values, dict) for key in values}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        merged.setdefault(section, {})[key] = value
        explicit.add(dotted)
    return merged, explicit


def field_docs(section_cls) -> dict[str, str]:
    """Field docstrings (the string literal after each field), for --help texts."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(section_cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs
