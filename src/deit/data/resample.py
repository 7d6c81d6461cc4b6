"""Pillow's `Image.resize(size, filter, box=...)` for a whole batch of images of different sizes, as two matrix
products per image on any device: the random resized crops of the device input path (`device_views`).

Pillow resamples an 8-bit image in two passes, each a weighted sum of the source pixels under a filter stretched
by the scale when shrinking (antialiasing), rounded and clipped to 8 bits in between. Each pass is a matrix: output
pixel o of an axis reads the source pixels [xmin, xmax) around its centre `start + (o + 0.5) * scale`, with the
filter's weights normalised to sum 1 and rounded to 22 fractional bits. A crop of the batch is then
`round(Wy @ round(X @ Wx^T))` (or vertical first, where Pillow 13 chooses so), every image with its own Wx and Wy;
a mirrored crop reverses the rows of Wx. In float64 the sums are whole numbers held exactly: the crops are
Pillow's to the bit (tests/test_device_views.py).
"""

from __future__ import annotations

import contextlib
import math

import PIL
import torch

PILLOW_MAJOR = int(PIL.__version__.split(".")[0])

# Pillow's filters: support (in source pixels at scale 1) and kernel
SUPPORT = {"box": 0.5, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 3.0}
FILTERS = ("nearest", *SUPPORT)
_F32_054, _F32_046 = 0.5400000214576721, 0.46000000834465027  # Pillow's float literals 0.54f, 0.46f
PRECISION_BITS = 22  # Pillow's fixed-point weights for 8-bit images: 32 - 8 - 2


def _kernel(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "box":
        return ((x > -0.5) & (x <= 0.5)).to(x.dtype)
    a = x.abs()
    if name == "bilinear":
        return (1 - a).clamp(min=0)
    if name == "hamming":
        px = a * math.pi
        value = torch.where(a == 0, 1.0, torch.sin(px) / px.clamp(min=1e-30) * (_F32_054 + _F32_046 * torch.cos(px)))
        return torch.where(a >= 1, 0.0, value)
    if name == "bicubic":  # a = -0.5
        near = (1.5 * a - 2.5) * a * a + 1
        far = (((a - 5) * a + 8) * a - 4) * -0.5
        return torch.where(a < 1, near, torch.where(a < 2, far, 0.0))
    if name == "lanczos":
        return torch.where((x >= -3) & (x < 3), _sinc(x) * _sinc(x / 3), 0.0)
    raise ValueError(f"unknown resampling filter {name!r}; choose one of {', '.join(FILTERS)}")


def _sinc(x: torch.Tensor) -> torch.Tensor:
    px = x * math.pi
    return torch.where(x == 0, 1.0, torch.sin(px) / torch.where(x == 0, 1.0, px))


def axis_weights(
    start: torch.Tensor, length: torch.Tensor, in_size: torch.Tensor, out_size: int, filters: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For B images, the weights of one axis: (first source pixel read, (B, out_size, span) weights from it on,
    in units of 2^-22 as Pillow holds them).

    `start`, `length`: the box along the axis, `in_size`: the image's size along it (float64, (B,))."""
    b = len(start)
    scale = length / out_size
    centre = start[:, None] + (torch.arange(out_size, dtype=torch.float64) + 0.5)[None] * scale[:, None]
    support = torch.tensor([SUPPORT.get(f, 0.5) for f in filters], dtype=torch.float64)
    filterscale = scale.clamp(min=1.0)
    reach = (support * filterscale)[:, None]
    low = torch.floor(centre - reach + 0.5).clamp(min=0)
    high = torch.minimum(torch.floor(centre + reach + 0.5), in_size[:, None])
    nearest = torch.tensor([f == "nearest" for f in filters])
    if nearest.any():  # Pillow's nearest: the source pixel under the centre, no weighting
        pick = torch.floor(centre).clamp(max=in_size[:, None] - 1)
        low = torch.where(nearest[:, None], pick, low)
        high = torch.where(nearest[:, None], pick + 1, high)
    first = low[:, 0]  # the taps move right with the output: the first output's are the leftmost
    span = int((high[:, -1] - first).max().item()) if b else 0
    x = first[:, None, None] + torch.arange(span, dtype=torch.float64)[None, None]  # (B, 1, span) source pixels
    inside = (x >= low[..., None]) & (x < high[..., None])
    weights = torch.zeros(b, out_size, span, dtype=torch.float64)
    for name in set(filters):
        rows = torch.tensor([f == name for f in filters])
        if name == "nearest":
            weights[rows] = 1.0
            continue
        offset = (x[rows] - centre[rows][..., None] + 0.5) / filterscale[rows][:, None, None]
        weights[rows] = _kernel(name, offset)
    weights = torch.where(inside, weights, 0.0)
    total = weights.sum(dim=2, keepdim=True)
    weights = torch.where(total != 0, weights / torch.where(total == 0, 1.0, total), weights)
    # Pillow's fixed-point weights: each rounded to a whole number of 2^-22, halves away from zero
    weights = torch.sign(weights) * torch.floor(weights.abs() * float(1 << PRECISION_BITS) + 0.5)
    return first.to(torch.int64), weights


def exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where it runs at full speed (CPUs; data-centre GPUs: P100, V100, A100, H100/H200, B200), in which
    every sum of a pass is exact and the crops are Pillow's to the bit; else float32, off by a level where a sum
    lies within ~1e-5 of a half."""
    if device.type != "cuda":
        return torch.float64
    major, minor = torch.cuda.get_device_capability(device)
    return torch.float64 if minor == 0 and major in (6, 7, 8, 9, 10) else torch.float32


@contextlib.contextmanager
def _full_float32():
    """float32 products at full precision (TF32's 10-bit mantissa would move outputs by a level)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def resized_crops(
    images: list[torch.Tensor],
    boxes: torch.Tensor,
    size: int,
    filters: list[str] | str = "bicubic",
    flips: torch.Tensor | None = None,
    max_bytes: int = 1 << 30,
) -> torch.Tensor:
    """Crop box (left, top, width, height) of each uint8 image (C, H, W) resized to size x size with Pillow's
    filter, mirrored where `flips`: uint8 (B, C, size, size) on the images' device. Images are resampled in
    groups whose float copies stay under `max_bytes` (one image alone may exceed it)."""
    b = len(images)
    if b == 0:
        raise ValueError("no images to crop")
    channels = {int(image.shape[0]) for image in images}
    if len(channels) != 1:
        raise ValueError(f"images of one batch need the same channels, got {sorted(channels)}")
    device = images[0].device
    filters = [filters] * b if isinstance(filters, str) else list(filters)
    flips = torch.zeros(b, dtype=torch.bool) if flips is None else flips.to("cpu", torch.bool)
    boxes = boxes.to("cpu", torch.float64)
    heights = torch.tensor([image.shape[1] for image in images], dtype=torch.float64)
    widths = torch.tensor([image.shape[2] for image in images], dtype=torch.float64)
    x0, wx = axis_weights(boxes[:, 0], boxes[:, 2], widths, size, filters)
    y0, wy = axis_weights(boxes[:, 1], boxes[:, 3], heights, size, filters)
    wx[flips] = wx[flips].flip(1)
    out = torch.empty(b, channels.pop(), size, size, dtype=torch.uint8, device=device)
    first = vertical_first(heights, widths, size)
    for order in (False, True):
        chosen = (first == order).nonzero().squeeze(1).tolist()
        for group in _groups(chosen, wx, wy, out.shape[1], max_bytes):
            out[group] = _resample([images[i] for i in group], x0[group], y0[group], wx[group], wy[group], order)
    return out


def vertical_first(heights: torch.Tensor, widths: torch.Tensor, size: int) -> torch.Tensor:
    """Which images Pillow resamples vertically first: from Pillow 13, those losing more than twice as many rows
    as columns (the first pass then works on fewer rows); before it, none. The order moves a pixel by a level at
    most where the two round differently in between."""
    if PILLOW_MAJOR < 13:
        return torch.zeros(len(heights), dtype=torch.bool)
    rows_lost, cols_lost = heights - size, widths - size
    return (rows_lost > 0) & (rows_lost > 2 * cols_lost)


def _groups(chosen: list[int], wx: torch.Tensor, wy: torch.Tensor, channels: int, max_bytes: int) -> list[list[int]]:
    """The chosen images in groups whose padded float copies stay under max_bytes (one image alone may not)."""
    groups, group, widest, tallest = [], [], 0, 0
    for i in chosen:
        w, h = _reach(wx[i]), _reach(wy[i])
        grown = (len(group) + 1) * channels * max(widest, w) * max(tallest, h) * 4
        if group and grown > max_bytes:
            groups.append(group)
            group, widest, tallest = [], 0, 0
        group.append(i)
        widest, tallest = max(widest, w), max(tallest, h)
    return groups + ([group] if group else [])


def _reach(weights: torch.Tensor) -> int:
    """How many source pixels from the first one an image's weights (out, span) read."""
    used = (weights != 0).any(dim=0).nonzero()
    return int(used.max().item()) + 1 if len(used) else 1


def _resample(images: list[torch.Tensor], xs, ys, wx, wy, vertical_first: bool) -> torch.Tensor:
    """One group: each image's read region into a zero-padded float batch, then the two passes in Pillow's order
    (weights past an image's own region are zero, so the padding is never read)."""
    device = images[0].device
    dtype = exact_dtype(device)
    span_x, span_y = max(_reach(w) for w in wx), max(_reach(w) for w in wy)
    x = torch.zeros(len(images), images[0].shape[0], span_y, span_x, dtype=dtype, device=device)
    for k, image in enumerate(images):
        region = image[:, ys[k] : ys[k] + span_y, xs[k] : xs[k] + span_x]
        x[k, :, : region.shape[1], : region.shape[2]] = region
    across = wx[:, :, :span_x].to(device, dtype).transpose(1, 2)[:, None]  # (G, 1, span_x, size)
    down = wy[:, :, :span_y].to(device, dtype)[:, None]  # (G, 1, size, span_y)
    with _full_float32():
        out = _round(down @ x) @ across if vertical_first else down @ _round(x @ across)
    return _round(out).to(torch.uint8)


def _round(x: torch.Tensor) -> torch.Tensor:
    """A pass's sums (in units of 2^-22) to 8-bit values as Pillow rounds them: halves up, clipped."""
    return torch.floor_(x.add_(1 << (PRECISION_BITS - 1)).mul_(2.0**-PRECISION_BITS)).clamp_(0, 255)
