"""The DeiT recipe's transforms, from timm: RandomResizedCrop, flip, RandAugment, random erasing; eval resize + crop.

Mixup/CutMix act on whole batches and live in the training loop (timm's `Mixup`). 3-Augment (DeiT III) is here
as an alternative to RandAugment.
"""

from __future__ import annotations

from timm.data import create_transform
from torchvision import transforms as T


def build_transform(
    train: bool,
    *,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_scale: float = 0.08,
    hflip: float = 0.5,
    color_jitter: float = 0.3,
    aa: str | None = "rand-m9-mstd0.5-inc1",
    three_augment: bool = False,
    interpolation: str = "bicubic",
    reprob: float = 0.25,
    remode: str = "pixel",
    recount: int = 1,
    eval_crop_ratio: float = 0.875,
):
    """PIL image -> normalised tensor (C, img_size, img_size), with the DeiT training augmentation or for eval."""
    if not train:
        # resize the short side to img_size / ratio, then center-crop img_size (224 / 0.875 = 256 for ImageNet)
        return create_transform(
            img_size, is_training=False, interpolation=interpolation, mean=mean, std=std, crop_pct=eval_crop_ratio
        )
    transform = create_transform(
        img_size,
        is_training=True,
        scale=(crop_scale, 1.0),
        hflip=hflip,
        color_jitter=None if three_augment or not color_jitter else color_jitter,
        auto_augment=None if three_augment or not aa or aa == "none" else aa,
        interpolation=interpolation,
        mean=mean,
        std=std,
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
    )
    _keep_posterize_bits(transform)
    if three_augment:
        # after crop and flip: one of grayscale / solarize / blur on every image, then colour jitter
        steps = list(transform.transforms)
        to_tensor = next(i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__)
        three = T.RandomChoice(
            [
                T.Grayscale(num_output_channels=len(mean)),
                T.RandomSolarize(threshold=128, p=1.0),
                T.GaussianBlur(kernel_size=max(3, (img_size // 10) | 1), sigma=(0.1, 2.0)),
            ]
        )
        jitter = [T.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter else []
        transform = T.Compose(steps[:to_tensor] + [three] + jitter + steps[to_tensor:])
    return transform


def crop_transform(img_size: int, *, crop_scale: float, hflip: float, interpolation: str):
    """PIL image -> uint8 tensor (C, img_size, img_size): the recipe's RandomResizedCrop and flip only, for images
    read from files whose other augmentation is done a batch at a time (`batch_aug.BatchAugment`)."""
    from timm.data.transforms import RandomResizedCropAndInterpolation

    return T.Compose(
        [
            RandomResizedCropAndInterpolation(img_size, scale=(crop_scale, 1.0), interpolation=interpolation),
            T.RandomHorizontalFlip(hflip),
            T.PILToTensor(),
        ]
    )


def _keep_posterize_bits(transform) -> None:
    """timm's RandAugment posterizes to 0 bits at the ends of its magnitude range, which Pillow >= 13 rejects
    ("bits must be between or equal to 1 and 8") and kills the data loader: keep at least 1 bit."""
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if "Posterize" in op.name and op.level_fn is not None:
                op.level_fn = _AtLeastOneBit(op.level_fn)


class _AtLeastOneBit:
    """A posterize level of at least 1 bit. A class, not a closure: loader processes started by spawn or forkserver
    (Python 3.14's default, and inside the demo's student processes) receive the transform pickled."""

    def __init__(self, level_fn):
        self.level_fn = level_fn

    def __call__(self, magnitude, hparams):
        return tuple(max(1, bits) for bits in self.level_fn(magnitude, hparams))
