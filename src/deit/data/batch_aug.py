"""The DeiT training augmentation on whole batches of same-size images, as tensors, on the device that trains.

The per-image pipeline (timm's transforms on PIL images, in loader processes) costs about a millisecond of a CPU
core per image; on a GPU it caps a run's speed at what the CPU cores can augment. Here a batch of uint8 images
(B, C, H, W) is augmented at once, with a magnitude and a mask per image:

- RandomResizedCrop, horizontal flip and RandAugment's geometric ops (rotate, shear, translate) compose into one
  affine map per image and one resampling (`grid_sample`) for the batch; DeiT III's Simple Random Crop (`--src`)
  is instead resampled as Pillow does it (`resample.resized_windows`), then flipped;
- RandAugment's other ops (auto-contrast, equalize, invert, posterize, solarize, solarize-add, colour, contrast,
  brightness, sharpness), or colour jitter when RandAugment is off, act on the images that drew them;
- or 3-Augment (DeiT III's) in RandAugment's place: one of grayscale, solarize and Gaussian blur per image, as
  the per-image pipeline draws them, then colour jitter;
- random erasing ("pixel" mode) fills a box per image with normal noise, after normalisation.

The policy is parsed by timm (any `rand-...` string: ops, magnitude and its spread, probabilities, op weights) and
each op's strength follows timm's level functions. Two things differ from the per-image pipeline: RandAugment's
geometric ops are applied before its colour ops rather than in the order drawn, and resampling does not antialias
(crops of small images are enlarged, never shrunk, so this matters for large images only).

Every draw comes from one seed per batch: a batch is a pure function of (images, seed), on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .resample import FILTERS, resized_size, resized_windows
from .transforms import BLUR_SIGMA, REMODES, Recipe, SimpleCrop, blur_kernel_size

# timm's RandAugment op names -> (kind, level function of a magnitude in [0, 10]); "signed" levels get a random sign
_GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
_BLENDS = {"Color": "color", "Contrast": "contrast", "Brightness": "brightness", "Sharpness": "sharpness"}
_INCREASING_BLENDS = {f"{name}Increasing" for name in _BLENDS}
_SIGNED = _GEOMETRIC | _INCREASING_BLENDS
_KNOWN = (
    _GEOMETRIC
    | set(_BLENDS)
    | _INCREASING_BLENDS
    | {
        "AutoContrast",
        "Equalize",
        "Invert",
        "Posterize",
        "PosterizeIncreasing",
        "PosterizeOriginal",
        "Solarize",
        "SolarizeIncreasing",
        "SolarizeAdd",
    }
)


def _level(name: str, m: torch.Tensor, translate_const: float) -> torch.Tensor:
    """timm's argument of op `name` for magnitudes m (before the random sign of the signed ops)."""
    if name == "Rotate":
        return m / 10 * 30  # degrees
    if name in ("ShearX", "ShearY"):
        return m / 10 * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return m / 10 * 0.45  # fraction of the image
    if name in ("TranslateX", "TranslateY"):
        return m / 10 * translate_const  # pixels
    if name in _INCREASING_BLENDS:
        return m / 10 * 0.9  # factor 1 +- this, at least 0.1
    if name in _BLENDS:
        return m / 10 * 1.8 + 0.1
    if name == "Posterize":
        return torch.floor(m / 10 * 4)  # bits kept
    if name == "PosterizeIncreasing":
        return 4 - torch.floor(m / 10 * 4)
    if name == "PosterizeOriginal":
        return torch.floor(m / 10 * 4) + 4
    if name == "Solarize":
        return torch.clamp(torch.floor(m / 10 * 256), max=256)  # threshold, 0..256
    if name == "SolarizeIncreasing":
        return 256 - torch.clamp(torch.floor(m / 10 * 256), max=256)
    if name == "SolarizeAdd":
        return torch.clamp(torch.floor(m / 10 * 110), max=128)
    return m  # AutoContrast, Equalize, Invert: no argument


class BatchAugment:
    """Augment uint8 image batches (B, C, H, W) -> normalised float batches (B, C, size, size).

    `recipe` as the per-image pipeline takes it (`transforms.Recipe`): RandAugment policies or 3-Augment; with
    RandAugment colour jitter is off (as in timm). `ratio`: RandomResizedCrop's aspect ratio range.
    """

    def __init__(
        self,
        img_size: int,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        recipe: Recipe = Recipe(),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        if recipe.remode not in REMODES:
            raise ValueError(f"aug.remode={recipe.remode!r}: choose one of {', '.join(REMODES)}")
        aa, interpolation = recipe.policy, recipe.train_interpolation
        self.img_size, self.scale, self.ratio, self.hflip = img_size, (recipe.crop_scale, 1.0), ratio, recipe.hflip
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)
        self.mode = "bicubic" if interpolation == "bicubic" else "nearest" if interpolation == "nearest" else "bilinear"
        self.reprob, self.remode, self.recount = recipe.reprob, recipe.remode, recipe.recount
        self.policy = aa
        self.ops: list[tuple[str, float, float, float, float]] = []  # name, prob, magnitude, std, max
        self.num_layers, self.weights = 0, None
        if aa:
            if not aa.startswith("rand"):
                raise ValueError(f"aug.aa={aa!r}: batch augmentation takes RandAugment policies ('rand-m9-...')")
            from timm.data.auto_augment import rand_augment_transform

            policy = rand_augment_transform(aa, {"translate_const": int(img_size * 0.45)})
            for op in policy.ops:
                if op.name not in _KNOWN:
                    raise ValueError(f"aug.aa={aa!r}: op {op.name} has no batch version")
                self.ops.append((op.name, op.prob, op.magnitude, op.magnitude_std, op.magnitude_max or 10.0))
            self.num_layers = policy.num_layers
            self.weights = None if policy.choice_weights is None else torch.as_tensor(policy.choice_weights)
        self.jitter = 0.0 if self.ops or not recipe.color_jitter else float(recipe.color_jitter)
        self.three_augment = recipe.three_augment
        self.src = recipe.src
        if self.src and interpolation not in FILTERS:
            choices = ", ".join(FILTERS)
            raise ValueError(f"aug.train_interpolation={interpolation!r} with --src: choose one of {choices}")
        self.filter = interpolation
        self.blur_kernel = blur_kernel_size(img_size)

    def __repr__(self) -> str:
        ops = ",".join(name for name, *_ in self.ops)
        return (
            f"BatchAugment(size={self.img_size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
            f"src={self.src}, randaugment={self.policy} {self.num_layers}x[{ops}], three_augment={self.three_augment}, "
            f"jitter={self.jitter}, "
            f"mode={self.mode}, reprob={self.reprob}, remode={self.remode}, recount={self.recount}, "
            f"mean={self.mean.tolist()}, std={self.std.tolist()})"
        )

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"batch augmentation takes uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        g = torch.Generator().manual_seed(seed)  # every parameter is drawn on the CPU: the same on any device
        b, c, h, w = images.shape
        device = images.device
        fill = self.mean.to(device).view(1, c, 1, 1) if len(self.mean) == c else images.new_zeros(())
        ops = self._draw_ops(b, g)
        size = self.img_size
        if self.src:
            images = self._simple_crops(images, g)
            h = w = size
        x = images.float() / 255
        if not self.src or any(name in _GEOMETRIC for layer in ops for name in layer):
            theta = self._geometry(b, h, w, ops, g)
            grid = F.affine_grid(theta.to(device), [b, c, size, size], align_corners=False)
            x = F.grid_sample(x - fill, grid, mode=self.mode, padding_mode="zeros", align_corners=False) + fill
            x = x.clamp(0, 1)
        for layer in ops:
            for name, (chosen, level) in layer.items():
                if name not in _GEOMETRIC:
                    idx = chosen.nonzero().squeeze(1).to(device)
                    if len(idx):
                        x[idx] = _colour_op(name, x[idx], level[chosen].to(device))
        if self.three_augment:
            choice = torch.randint(0, len(THREE_AUGMENT), (b,), generator=g)
            sigma = torch.empty(b).uniform_(*BLUR_SIGMA, generator=g)
            x = three_augment(x, choice, sigma, self.blur_kernel)
        if self.jitter:
            x = self._jitter(x, g)
        x = (x - self.mean.to(device).view(1, -1, 1, 1)) / self.std.to(device).view(1, -1, 1, 1)
        for _ in range(self.recount if self.reprob > 0 else 0):
            x = self._erase(x, g, seed)
        return x

    # -- draws ------------------------------------------------------------------------------------------------
    def _draw_ops(self, b: int, g: torch.Generator) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Per RandAugment layer: {op name: (which images apply it, their signed level)}."""
        if not self.ops:
            return []
        n = len(self.ops)
        if self.weights is None:  # as timm: uniform, with replacement (the same op may come twice)
            choice = torch.randint(0, n, (b, self.num_layers), generator=g)
        else:  # weighted: timm draws without replacement
            choice = torch.multinomial(self.weights.expand(b, n), self.num_layers, replacement=False, generator=g)
        layers = []
        for layer in range(self.num_layers):
            applied = torch.rand(b, generator=g)
            noise = torch.randn(b, generator=g)
            spread = torch.rand(b, generator=g)
            sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
            drawn = {}
            for k, (name, prob, magnitude, mstd, mmax) in enumerate(self.ops):
                chosen = (choice[:, layer] == k) & (applied <= prob)
                if not chosen.any():
                    continue
                if mstd == float("inf"):
                    m = spread * magnitude
                elif mstd > 0:
                    m = magnitude + mstd * noise
                else:
                    m = torch.full((b,), float(magnitude))
                level = _level(name, m.clamp(0, mmax), self.img_size * 0.45)
                if name in _SIGNED:
                    level = level * sign
                if name in _INCREASING_BLENDS:
                    level = (1 + level).clamp(min=0.1)
                drawn[name] = (chosen, level)
            layers.append(drawn)
        return layers

    def _geometry(self, b: int, h: int, w: int, ops, g: torch.Generator) -> torch.Tensor:
        """Per image, the affine map from output to source coordinates, in grid_sample's normalised form."""
        if self.src:  # cropped and flipped already (`_simple_crops`)
            left, top, cw, ch = (torch.zeros(b), torch.zeros(b), torch.full((b,), float(w)), torch.full((b,), float(h)))
            flip = torch.zeros(b, dtype=torch.bool)
        else:
            left, top, cw, ch = self._crop_boxes(b, h, w, g)
            flip = torch.rand(b, generator=g) < self.hflip
        s = float(self.img_size)
        # undo the flip, then map the crop (size s) onto its box in the source image
        unflip = torch.eye(3).repeat(b, 1, 1)
        unflip[flip, 0, 0], unflip[flip, 0, 2] = -1.0, s
        box = torch.zeros(b, 3, 3)
        box[:, 0, 0], box[:, 0, 2] = cw / s, left
        box[:, 1, 1], box[:, 1, 2] = ch / s, top
        box[:, 2, 2] = 1
        pixel = box @ unflip @ _geometric_ops(b, s, ops)
        # normalised coordinates (align_corners=False): u = 2 p / size - 1 on both sides
        to_pixel = torch.tensor([[s / 2, 0, s / 2], [0, s / 2, s / 2], [0, 0, 1.0]])
        to_norm = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1.0]])
        return (to_norm @ pixel @ to_pixel)[:, :2]

    def _crop_boxes(self, b: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """RandomResizedCrop's box per image, (left, top, width, height): timm/torchvision's 10 tries at a random
        area and aspect, else a central crop of the aspect clamped to the range."""
        area = h * w
        tries = 10
        target = torch.empty(b, tries).uniform_(*self.scale, generator=g) * area
        log_ratio = torch.empty(b, tries).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=g)
        aspect = torch.exp(log_ratio)
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        fits = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
        first = fits.float().argmax(dim=1, keepdim=True)
        cw, ch, any_fit = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1), fits.any(dim=1)
        in_ratio = w / h
        fw, fh = (
            (w, round(w / min(self.ratio)))
            if in_ratio < min(self.ratio)
            else ((round(h * max(self.ratio)), h) if in_ratio > max(self.ratio) else (w, h))
        )
        cw, ch = torch.where(any_fit, cw, float(fw)), torch.where(any_fit, ch, float(fh))
        top = torch.floor(torch.rand(b, generator=g) * (h - ch + 1))
        left = torch.floor(torch.rand(b, generator=g) * (w - cw + 1))
        top = torch.where(any_fit, top, float((h - fh) // 2))
        left = torch.where(any_fit, left, float((w - fw) // 2))
        return left, top, cw, ch

    def _simple_crops(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """DeiT III's Simple Random Crop and the flip of each image (uint8, as Pillow resamples): the short side
        resized to the input size, a window of it at a random offset of -4 to +4 past its borders (reflected)."""
        b, _, h, w = images.shape
        (rw, rh), size, pad = resized_size(w, h, self.img_size), self.img_size, SimpleCrop.PAD
        top = torch.randint(0, rh + 2 * pad - size + 1, (b,), generator=g) - pad
        left = torch.randint(0, rw + 2 * pad - size + 1, (b,), generator=g) - pad
        flips = torch.rand(b, generator=g) < self.hflip
        whole = torch.tensor([[0, 0, w, h]], dtype=torch.float64).expand(b, 4)
        resized = torch.tensor([[rw, rh]], dtype=torch.float64).expand(b, 2)
        return resized_windows(list(images), whole, resized, torch.stack([left, top], 1), size, self.filter, flips)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """torchvision's ColorJitter(v, v, v): brightness, contrast, saturation factors in [1 - v, 1 + v], in a
        random order (one per batch)."""
        b = x.shape[0]
        lo, hi = max(0.0, 1 - self.jitter), 1 + self.jitter
        factors = torch.empty(3, b).uniform_(lo, hi, generator=g).to(x.device)
        for k in torch.randperm(3, generator=g).tolist():
            x = _colour_op(("brightness", "contrast", "color")[k], x, factors[k])
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator, seed: int) -> torch.Tensor:
        """timm's RandomErasing: with probability reprob, a box of 2%-33% of the area, aspect in [0.3, 3.3]."""
        b, c, h, w = x.shape
        tries = 10
        area = torch.empty(b, tries).uniform_(0.02, 1 / 3, generator=g) * h * w
        aspect = torch.exp(torch.empty(b, tries).uniform_(math.log(0.3), math.log(1 / 0.3), generator=g))
        eh, ew = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
        fits = (ew < w) & (eh < h)
        first = fits.float().argmax(dim=1, keepdim=True)
        eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
        top = torch.floor(torch.rand(b, generator=g) * (h - eh + 1))
        left = torch.floor(torch.rand(b, generator=g) * (w - ew + 1))
        erase = (torch.rand(b, generator=g) < self.reprob) & fits.any(dim=1)
        if not erase.any():
            return x
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        inside = (rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
        inside = inside & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & erase.view(b, 1, 1)
        inside = inside.unsqueeze(1).to(x.device)
        noise_gen = torch.Generator(device=x.device).manual_seed(seed ^ 0x2545F4914F6CDD1D)
        if self.remode == "pixel":
            fill = torch.randn(x.shape, generator=noise_gen, device=x.device, dtype=x.dtype)
        elif self.remode == "rand":
            fill = torch.randn((b, c, 1, 1), generator=noise_gen, device=x.device, dtype=x.dtype)
        else:
            fill = torch.zeros((), device=x.device, dtype=x.dtype)
        return torch.where(inside, fill, x)


THREE_AUGMENT = ("grayscale", "solarize", "blur")  # the per-image pipeline's RandomChoice, in its order


def three_augment(x: torch.Tensor, choice: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """3-Augment on images x in [0, 1] (B, C, H, W): image i grayscaled, solarized at 128 or blurred (sigma[i]), as
    `choice[i]` indexes THREE_AUGMENT; the per-image pipeline's torchvision steps (`transforms.train_transform`)."""
    x = x.clone()
    device = x.device
    for k, name in enumerate(THREE_AUGMENT):
        idx = (choice == k).nonzero().squeeze(1)
        if not len(idx):
            continue
        part = x[idx.to(device)]
        if name == "grayscale":
            part = _gray(part).expand_as(part)
        elif name == "solarize":
            part = _colour_op("Solarize", part, torch.full((len(idx),), 128.0, device=device))
        else:
            part = gaussian_blur(part, sigma[idx].to(device), kernel_size)
        x[idx.to(device)] = part
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """torchvision's gaussian_blur with a sigma per image: the kernel's taps at -(k-1)/2 ... (k-1)/2, normalised,
    over the image reflected at its borders; one row and one column pass (the 2-D kernel is their product)."""
    n, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n * c, k)
    pad = kernel_size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, n * c, h + 2 * pad, w + 2 * pad)
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (x - degenerate), clipped."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's conversion to "L" of the 8-bit values nearest x: ITU-R 601-2 luma in Pillow's 16-bit fixed point
    (every sum a whole number below 2^24: exact in float32)."""
    if x.shape[1] == 1:
        return x
    q = (x * 255).round()
    luma = q[:, 0:1] * 19595 + q[:, 1:2] * 38470 + q[:, 2:3] * 7471
    return torch.floor((luma + 0x8000) / 0x10000) / 255


def _geometric_ops(b: int, s: float, ops) -> torch.Tensor:
    """RandAugment's geometric ops drawn for each image, as one 3x3 map per image from output pixel coordinates
    (pixel i spans [i, i + 1)) to the ops' input; an op not chosen for an image is the identity there."""
    m = torch.eye(3).repeat(b, 1, 1)
    for layer in ops:
        for name, (chosen, level) in layer.items():
            if name not in _GEOMETRIC:
                continue
            step = torch.eye(3).repeat(b, 1, 1)
            if name == "Rotate":  # PIL's rotate: counter-clockwise about the centre
                a = -torch.deg2rad(level)
                cos, sin = torch.cos(a), torch.sin(a)
                step[:, 0, 0], step[:, 0, 1], step[:, 1, 0], step[:, 1, 1] = cos, sin, -sin, cos
                step[:, 0, 2] = s / 2 - cos * s / 2 - sin * s / 2
                step[:, 1, 2] = s / 2 + sin * s / 2 - cos * s / 2
            elif name == "ShearX":
                step[:, 0, 1] = level
            elif name == "ShearY":
                step[:, 1, 0] = level
            elif name in ("TranslateX", "TranslateXRel"):
                step[:, 0, 2] = level * (s if name.endswith("Rel") else 1)
            else:
                step[:, 1, 2] = level * (s if name.endswith("Rel") else 1)
            step[~chosen] = torch.eye(3)
            # output -> input of the last op first: the maps compose in layer order
            m = m @ step
    return m


def _colour_op(name: str, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """One RandAugment (or jitter) op on images x in [0, 1] (B, C, H, W), with a level per image."""
    base = name.removesuffix("Increasing") if name in _INCREASING_BLENDS else name
    base = _BLENDS.get(base, base)
    if base == "brightness":
        return _blend(torch.zeros_like(x), x, level)
    if base == "contrast":
        mean = (_gray(x) * 255).round().mean(dim=(1, 2, 3), keepdim=True).add(0.5).floor() / 255
        return _blend(mean.expand_as(x), x, level)
    if base == "color":
        return _blend(_gray(x).expand_as(x), x, level)
    if base == "sharpness":  # PIL's SMOOTH filter inside, the border kept
        kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device) / 13
        c = x.shape[1]
        smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c, padding=1)
        smooth = (smooth * 255).round() / 255
        degenerate = x.clone()
        degenerate[:, :, 1:-1, 1:-1] = smooth[:, :, 1:-1, 1:-1]
        return _blend(degenerate, x, level)
    q = (x * 255).round()
    if base == "AutoContrast":
        lo = q.amin(dim=(2, 3), keepdim=True)
        hi = q.amax(dim=(2, 3), keepdim=True)
        scaled = ((q - lo) * (255 / (hi - lo).clamp(min=1))).floor()
        return torch.where(hi > lo, scaled, q) / 255
    if base == "Equalize":
        from torchvision.transforms.v2 import functional as TF

        return TF.equalize(q.to(torch.uint8)).float() / 255
    if base == "Invert":
        return (255 - q) / 255
    if base.startswith("Posterize"):
        bits = level.clamp(1, 8).to(torch.int64).view(-1, 1, 1, 1)  # at least 1 bit, as in the per-image pipeline
        keep = (255 - (2 ** (8 - bits) - 1)).to(x.device)
        return (q.to(torch.int64) & keep).float() / 255
    if base.startswith("Solarize") and base != "SolarizeAdd":
        return torch.where(q >= level.view(-1, 1, 1, 1), 255 - q, q) / 255
    if base == "SolarizeAdd":
        return torch.where(q < 128, (q + level.view(-1, 1, 1, 1)).clamp(max=255), q) / 255
    raise ValueError(f"no batch version of {name}")
