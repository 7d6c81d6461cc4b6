"""The sections of a training config (`model:`, `data:`, `aug:`, `optim:`, `distill:`, `run:`): their fields,
defaults, help texts (the string after each field) and rules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.device_views import INPUT_PATHS
from ..data.transforms import MIXUP_MODES, REMODES, Recipe
from ..distill.attention import ATTENTION_LOSSES, parse_blocks
from ..distill.cache_spec import DTYPES as CACHE_DTYPES
from ..distill.losses import DISTILLATION_TYPES
from ..distributed import PRECISIONS
from ..models.metadata import INTENSITIES, INTERPOLATIONS
from .values import check_policy, check_section, known_architecture, one_of, within


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
        check_section(
            "model",
            self,
            lambda c: [
                ("drop_path", 0.0 <= c.drop_path < 1.0, "must be in [0, 1)"),
                (
                    "layer_scale_init",
                    c.layer_scale_init is None or 0.0 <= c.layer_scale_init <= 100.0,
                    "must be between 0 and 100",
                ),
                ("input_size", within(8, c.input_size, 4096), "must be between 8 and 4096 px"),
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
    jpeg_draft: bool = True
    """Folders, loader path: decode a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, Pillow's draft
    mode) when its random crop box is at least twice the input size both ways (large photos: several times less
    decoding); the box is unchanged. Off: every JPEG decoded whole, as the device input path does."""
    input_path: str = "auto"
    """Where image files become training views with --batch-aug: loader (the loader processes decode, crop and
    flip each image), device (they read the bytes; the training device decodes JPEGs a batch at a time and crops
    them all at once, the same crop boxes for a seed), or auto: device on a GPU, loader elsewhere."""

    def __post_init__(self):
        from ..data.datasets import DATA_SETS, canonical_name

        def known(name: str) -> bool:
            try:
                return bool(canonical_name(name))
            except ValueError:
                return False

        check_section(
            "data",
            self,
            lambda c: [
                (
                    "data_set",
                    known(c.data_set),
                    f"is not a data set; choose one of {', '.join(DATA_SETS)}",
                ),
                ("labels_per_class", within(1, c.labels_per_class, 10**9), "must be >= 1"),
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
                ("intensity", c.intensity in INTENSITIES, one_of(INTENSITIES)),
                ("input_path", c.input_path in INPUT_PATHS, one_of(INPUT_PATHS)),
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
        check_section(
            "aug",
            self,
            lambda c: [
                ("crop_scale", 0.0 < c.crop_scale <= 1.0, "must be in (0, 1]"),
                ("hflip", 0.0 <= c.hflip <= 1.0, "must be in [0, 1]"),
                ("color_jitter", 0.0 <= c.color_jitter <= 10.0, "must be in [0, 10]"),
                ("smoothing", 0.0 <= c.smoothing < 1.0, "must be in [0, 1)"),
                ("train_interpolation", c.train_interpolation in INTERPOLATIONS, one_of(INTERPOLATIONS)),
                ("reprob", 0.0 <= c.reprob <= 1.0, "must be in [0, 1]"),
                ("remode", c.remode in REMODES, one_of(REMODES)),
                ("recount", 1 <= c.recount <= 64, "must be between 1 and 64"),
                ("mixup", 0.0 <= c.mixup <= 1e3, "must be >= 0 (0 disables it)"),
                ("cutmix", 0.0 <= c.cutmix <= 1e3, "must be >= 0 (0 disables it)"),
                ("mixup_prob", 0.0 <= c.mixup_prob <= 1.0, "must be in [0, 1]"),
                ("mixup_switch_prob", 0.0 <= c.mixup_switch_prob <= 1.0, "must be in [0, 1]"),
                ("mixup_mode", c.mixup_mode in MIXUP_MODES, one_of(MIXUP_MODES)),
                ("eval_crop_ratio", 0.0 < c.eval_crop_ratio <= 1.0, "must be in (0, 1]"),
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

        check_section(
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
        check_section(
            "distill",
            self,
            lambda c: [
                ("distillation_type", c.distillation_type in DISTILLATION_TYPES, one_of(DISTILLATION_TYPES)),
                (
                    "teacher_model",
                    known_architecture(c.teacher_model),
                    "is not small_cnn, a deit model, nor a timm or torchvision architecture",
                ),
                ("distillation_alpha", 0.0 <= c.distillation_alpha <= 1.0, "must be in [0, 1]"),
                ("distillation_tau", 0.0 < c.distillation_tau <= 1e3, "must be > 0"),
                ("attn_distillation_weight", 0.0 <= c.attn_distillation_weight <= 1e3, "must be >= 0"),
                ("attn_distillation_loss", c.attn_distillation_loss in ATTENTION_LOSSES, one_of(ATTENTION_LOSSES)),
                ("teacher_cache_topk", 1 <= c.teacher_cache_topk <= 10**6, "must be >= 1"),
                ("teacher_cache_dtype", c.teacher_cache_dtype in CACHE_DTYPES, one_of(CACHE_DTYPES)),
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

        check_section(
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
                ("precision", c.precision in PRECISIONS, one_of(PRECISIONS)),
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
