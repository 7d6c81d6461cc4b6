"""The DeiT recipe's per-image transforms, from timm: RandomResizedCrop, flip, RandAugment (or 3-Augment, DeiT
III's), random erasing; for evaluation, resize and centre crop.

timm builds the training pipeline; four of its steps are then swapped for ones that draw the same way and cost
less per image (`faster_steps`), which matters most for small images, where per-call overhead is most of a view's
time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import RandAugment
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from .images import LazyJpeg, channels_first
from .resample import resized_size

# random erasing's fills: per-pixel normal noise, one random colour per box, or zeros
REMODES = ("pixel", "rand", "const")


@dataclass
class Recipe:
    """The per-image part of the DeiT training augmentation (the paper's Table 9 by default). One value serves both
    pipelines: timm's transforms on each image (`train_transform`) and the batch version (`batch_aug.BatchAugment`).
    Mixup/CutMix act on whole batches and are not part of it. The training config's `aug` section is a Recipe with
    the rest of the augmentation settings (`config.AugConfig`): its fields are these, flag for flag."""

    crop_scale: float = 0.08
    """Smallest area fraction kept by RandomResizedCrop."""
    hflip: float = 0.5
    """Horizontal flip probability (0 for digits)."""
    color_jitter: float = 0.3
    """Colour jitter strength; off under RandAugment and 3-Augment's own jitter, as in timm."""
    aa: str | None = "rand-m9-mstd0.5-inc1"
    """RandAugment policy in timm's notation; null for none."""
    three_augment: bool = False
    """3-Augment (grayscale, solarize or blur, one at a time) instead of RandAugment."""
    src: bool = False
    """Simple Random Crop (DeiT III) in place of RandomResizedCrop: the short side resized to the input size, then a
    random crop of it from the image padded by 4 px (reflected)."""
    train_interpolation: str = "bicubic"
    reprob: float = 0.25
    """Random erasing probability."""
    remode: str = "pixel"
    recount: int = 1

    @property
    def policy(self) -> str | None:
        """The RandAugment policy, None when off."""
        return None if self.three_augment or not self.aa or self.aa == "none" else self.aa


def train_transform(img_size: int, *, mean: tuple[float, ...], std: tuple[float, ...], recipe: Recipe = Recipe()):
    """PIL image -> normalised tensor (C, img_size, img_size) under the recipe's training augmentation."""
    transform = create_transform(
        img_size,
        is_training=True,
        scale=(recipe.crop_scale, 1.0),
        hflip=recipe.hflip,
        color_jitter=None if recipe.three_augment or not recipe.color_jitter else recipe.color_jitter,
        auto_augment=recipe.policy,
        interpolation=recipe.train_interpolation,
        mean=mean,
        std=std,
        re_prob=recipe.reprob,
        re_mode=recipe.remode,
        re_count=recipe.recount,
    )
    keep_posterize_bits(transform)
    if recipe.src:
        steps = list(transform.transforms)
        # the simple crop in RandomResizedCrop's place
        transform = T.Compose(simple_random_crop(img_size, recipe.train_interpolation) + steps[1:])
    if recipe.three_augment:
        # after crop and flip: one of grayscale / solarize / blur on every image, then colour jitter
        steps = list(transform.transforms)
        to_tensor = next(i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__)
        three = T.RandomChoice(
            [
                T.Grayscale(num_output_channels=len(mean)),
                T.RandomSolarize(threshold=128, p=1.0),
                T.GaussianBlur(kernel_size=blur_kernel_size(img_size), sigma=BLUR_SIGMA),
            ]
        )
        jitter = recipe.color_jitter
        transform = T.Compose(
            steps[:to_tensor]
            + [three]
            + ([T.ColorJitter(jitter, jitter, jitter)] if jitter else [])
            + steps[to_tensor:]
        )
    return T.Compose(faster_steps(list(transform.transforms)))


BLUR_SIGMA = (0.1, 2.0)
"""3-Augment's Gaussian blur: its sigma drawn uniformly from this range."""


def blur_kernel_size(img_size: int) -> int:
    """3-Augment's Gaussian blur kernel: an odd tenth of the image, at least 3 taps."""
    return max(3, (img_size // 10) | 1)


def eval_transform(
    img_size: int,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bicubic",
    crop_ratio: float = 0.875,
    crop_mode: str = "center",
):
    """PIL image -> normalised tensor: the short side (`squash`: the whole image, to a square) resized to img_size /
    crop_ratio, then the centre img_size (224 / 0.875 = 256 for ImageNet)."""
    return create_transform(
        img_size,
        is_training=False,
        interpolation=interpolation,
        mean=mean,
        std=std,
        crop_pct=crop_ratio,
        crop_mode=crop_mode,
    )


def crop_transform(img_size: int, recipe: Recipe = Recipe()):
    """PIL image -> uint8 tensor (C, img_size, img_size): the recipe's RandomResizedCrop and flip only, for images
    read from files whose other augmentation is done a batch at a time (`batch_aug.BatchAugment`)."""
    crop = (
        simple_random_crop(img_size, recipe.train_interpolation)
        if recipe.src
        else [ResizedCrop(img_size, scale=(recipe.crop_scale, 1.0), interpolation=recipe.train_interpolation)]
    )
    return T.Compose([*crop, HorizontalFlip(recipe.hflip), ToUint8Tensor()])


def simple_random_crop(img_size: int, interpolation: str) -> list:
    """DeiT III's Simple Random Crop: the short side resized to img_size, then an img_size square at random from the
    image padded by 4 px on each side (reflected)."""
    return [SimpleCrop(img_size, interpolation)]


class SimpleCrop:
    """DeiT III's Simple Random Crop as torchvision's Resize(size) and RandomCrop(size, padding=4, reflect) do it,
    with the same draws from torch's generator, and its draw alone for a size (`draw`, which the device path
    takes from a file's header)."""

    PAD = 4

    def __init__(self, size: int, interpolation: str = "bicubic"):
        from timm.data.transforms import str_to_interp_mode

        self.size, self.interpolation = size, str_to_interp_mode(interpolation)

    def draw(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int], T.InterpolationMode]:
        """For an image of this size: the (width, height) it is resized to, the window's (left, top) in it (from -4
        on: the reflected border) and the interpolation."""
        w, h = resized_size(width, height, self.size)
        top = int(torch.randint(0, h + 2 * self.PAD - self.size + 1, size=(1,)).item())
        left = int(torch.randint(0, w + 2 * self.PAD - self.size + 1, size=(1,)).item())
        return (w, h), (left - self.PAD, top - self.PAD), self.interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        (w, h), (left, top), mode = self.draw(*img.size)
        if (w, h) != img.size:
            img = img.resize((w, h), TF.pil_modes_mapping[mode])
        img = TF.pad(img, self.PAD, padding_mode="reflect")
        return img.crop((left + self.PAD, top + self.PAD, left + self.PAD + self.size, top + self.PAD + self.size))

    def __repr__(self) -> str:
        return f"SimpleCrop(size={self.size}, pad={self.PAD}, reflect, interpolation={self.interpolation.value})"


def faster_steps(steps: list) -> list:
    """timm's training steps with RandomResizedCrop, flip, RandAugment and ToTensor + Normalize replaced by the
    cheaper equivalents below (the same draws from the same ranges); the others kept."""
    out = []
    for step in steps:
        if type(step) is RandomResizedCropAndInterpolation:
            step = ResizedCrop(step.size, scale=step.scale, ratio=step.ratio, interpolation=step.interpolation)
        elif type(step) is T.RandomHorizontalFlip:
            step = HorizontalFlip(step.p)
        elif type(step) is RandAugment:
            step = FastRandAugment(step.ops, step.num_layers, step.choice_weights)
        elif type(step) is T.Normalize and out and "ToTensor" in type(out[-1]).__name__:
            out[-1] = ToNormalizedTensor(step.mean, step.std)
            continue
        out.append(step)
    return out


class ResizedCrop(RandomResizedCropAndInterpolation):
    """timm's RandomResizedCrop (its draw of the box and interpolation), cropped and resized by one Pillow call:
    resizing with a box reads the box's pixels in place, without a cropped copy first."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear"):
        if isinstance(interpolation, str):
            super().__init__(size, scale, ratio, interpolation)
        else:  # already torchvision modes (one, or a tuple to draw from)
            super().__init__(size, scale, ratio)
            self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        (left, top, w, h), mode = self.draw(*img.size)
        box = (left, top, left + w, top + h)
        if isinstance(img, LazyJpeg):  # decoded now, at a lower scale where the box allows (`images.read_lazy`)
            img, box = img.decode(box, self.size[::-1])
        return img.resize(self.size[::-1], TF.pil_modes_mapping[mode], box=box)

    def draw(self, width: int, height: int) -> tuple[tuple[int, int, int, int], T.InterpolationMode]:
        """The crop box (left, top, width, height) and interpolation for an image of this size: timm's draws, from
        Python's generator (the device path draws them from the file's header, `device_views.DrawView`)."""
        size_only = torch.empty((0, height, width), dtype=torch.uint8)  # get_params reads the size alone
        top, left, h, w = self.get_params(size_only, self.scale, self.ratio)
        mode = (
            random.choice(self.interpolation) if isinstance(self.interpolation, (tuple, list)) else self.interpolation
        )
        return (left, top, w, h), mode


class HorizontalFlip:
    """A mirror image with probability p, drawn from Python's generator (torchvision's draws a torch tensor)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.draw() else img

    def draw(self) -> bool:
        return random.random() < self.p

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class FastRandAugment(RandAugment):
    """timm's RandAugment with its layers' ops drawn by Python's generator: the same draw as timm's NumPy one
    (uniform, with replacement, when the ops are unweighted) at a fraction of its cost per image."""

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.choice_weights is not None:  # weighted, without replacement: timm's own draw
            return super().__call__(img)
        for op in random.choices(self.ops, k=self.num_layers):
            img = op(img)
        return img


class ToNormalizedTensor:
    """An 8-bit "L" or "RGB" image -> float tensor (C, H, W), (x / 255 - mean) / std: the float32 operations
    ToTensor and Normalize apply, done by NumPy, whose per-call cost is a fraction of torch's for small images.
    Other modes (and a mean of another length) take ToTensor and Normalize."""

    def __init__(self, mean, std):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        if not isinstance(img, Image.Image) or img.mode not in ("L", "RGB") or len(self.mean) != len(img.mode):
            return TF.normalize(TF.to_tensor(img), self.mean, self.std)
        # channels first while still bytes (a quarter of the memory to move), then a new float32 array
        x = channels_first(np.asarray(img)).astype(np.float32)
        x /= 255
        x -= self._mean
        x /= self._std
        return torch.from_numpy(x)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


class ToUint8Tensor:
    """A Pillow image -> uint8 tensor (C, H, W), as PILToTensor."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode not in ("L", "RGB"):
            return TF.pil_to_tensor(img)
        return torch.from_numpy(channels_first(np.array(img)))  # a copy of the pixels: the tensor may write

    def __repr__(self) -> str:
        return "ToUint8Tensor()"


def keep_posterize_bits(transform) -> None:
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


MIXUP_MODES = ("batch", "pair", "elem")  # one lambda per batch, per pair of images, or per image


def mixup_cutmix(
    mixup: float,
    cutmix: float,
    *,
    prob: float,
    switch_prob: float,
    mode: str,
    smoothing: float,
    num_classes: int,
):
    """timm's Mixup/CutMix over whole batches (alphas `mixup` and `cutmix`, 0 turns one off); its targets are
    smoothed one-hot mixes."""
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=smoothing,
        num_classes=num_classes,
    )
