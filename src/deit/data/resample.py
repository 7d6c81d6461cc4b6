"""Pillow's `Image.resize(size, filter, box=...)` for a whole batch of images of different sizes, as two matrix
products per image on any device: the random resized crops and simple random crops of the device input path
(`device_views`) and of batch augmentation (`batch_aug`).

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
from dataclasses import dataclass

import numpy as np
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


@dataclass
class Taps:
    """Which source pixels each output pixel of one axis reads, for B images (float64, on the CPU): output o of
    image b reads [low, high) around `centre`; `first` is the first pixel any output reads and `reach` how many
    from it on (the taps move right with the output)."""

    centre: torch.Tensor  # (B, count)
    low: torch.Tensor
    high: torch.Tensor
    filterscale: torch.Tensor  # (B,)
    first: torch.Tensor  # (B,) int64
    reach: torch.Tensor  # (B,) int64


def taps(
    start: torch.Tensor,
    length: torch.Tensor,
    in_size: torch.Tensor,
    out_size: torch.Tensor,
    filters: list[str],
    offset: torch.Tensor | None = None,
    count: int | None = None,
) -> Taps:
    """Pillow's taps for the box [start, start + length) of an axis of `in_size` pixels resized to `out_size`
    (all (B,) float64), for the `count` outputs from `offset` on (a window of the resized image; default all of
    a square `out_size`). Outputs past either end of the resized image are read reflected at its border pixel,
    as torchvision's reflect padding extends an image."""
    count = int(out_size[0]) if count is None else count
    offset = torch.zeros_like(start) if offset is None else offset
    scale = length / out_size
    o = reflected(offset[:, None] + torch.arange(count, dtype=torch.float64)[None], out_size[:, None])
    centre = start[:, None] + (o + 0.5) * scale[:, None]
    support = torch.tensor([SUPPORT.get(f, 0.5) for f in filters], dtype=torch.float64)
    filterscale = scale.clamp(min=1.0)
    reach = (support * filterscale)[:, None]
    low = torch.floor(centre - reach + 0.5).clamp(min=0)
    high = torch.minimum(torch.floor(centre + reach + 0.5), in_size[:, None])
    nearest = torch.tensor([f == "nearest" for f in filters])
    if nearest.any():  # Pillow's nearest: the source pixel under the centre, no weighting
        pick = torch.floor(_stepped(start, scale, o)).clamp(max=in_size[:, None] - 1)
        low = torch.where(nearest[:, None], pick, low)
        high = torch.where(nearest[:, None], pick + 1, high)
    first = low.amin(dim=1)
    return Taps(centre, low, high, filterscale, first.to(torch.int64), (high.amax(dim=1) - first).to(torch.int64))


def reflected(o: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Indices o of an axis of `size` pixels extended by reflection at its border pixels (-1 -> 1, size ->
    size - 2: numpy's and torchvision's "reflect"), for overshoots smaller than the axis."""
    o = o.abs()
    return torch.where(o > size - 1, 2 * (size - 1) - o, o)


def _stepped(start: torch.Tensor, scale: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The centres of outputs o (B, count) as Pillow's nearest-neighbour scaling reaches them: start + scale / 2,
    then scale added once per output pixel in float64 (a sum that lands a hair under a whole number picks the
    pixel before)."""
    rows = []
    for s, step, index in zip(start.tolist(), scale.tolist(), o.to(torch.int64)):
        terms = np.full(int(index.max()) + 1, step)
        terms[0] = s + step * 0.5
        rows.append(np.add.accumulate(terms)[index.numpy()])
    return torch.from_numpy(np.stack(rows))


def axis_weights(
    t: Taps, filters: list[str], rows: list[int], span: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The weights of images `rows` along one axis, (G, count, span) on `device`: from each image's first pixel
    on, in units of 2^-22 as Pillow holds them (whole numbers)."""
    index = torch.tensor(rows)
    centre, low, high = (v[index].to(device) for v in (t.centre, t.low, t.high))
    filterscale = t.filterscale[index].to(device)
    x = t.first[index].to(device, torch.float64)[:, None, None] + torch.arange(span, device=device)[None, None]
    offset = (x - centre[..., None] + 0.5) / filterscale[:, None, None]
    weights = torch.zeros(offset.shape, dtype=torch.float64, device=device)
    names = [filters[i] for i in rows]
    for name in set(names):
        chosen = torch.tensor([f == name for f in names], device=device)
        value = torch.ones_like(offset) if name == "nearest" else _kernel(name, offset)
        weights = torch.where(chosen[:, None, None], value, weights)
    weights = torch.where((x >= low[..., None]) & (x < high[..., None]), weights, 0.0)
    total = weights.sum(dim=2, keepdim=True)
    weights = weights / torch.where(total == 0, 1.0, total)
    # Pillow's fixed-point weights: each rounded to a whole number of 2^-22, halves away from zero
    weights = torch.sign(weights) * torch.floor(weights.abs() * float(1 << PRECISION_BITS) + 0.5)
    return weights.to(dtype)


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
    square = torch.full((b, 2), float(size), dtype=torch.float64)
    return resized_windows(images, boxes, square, torch.zeros(b, 2), size, filters, flips, max_bytes)


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) of an image whose short side torchvision's Resize(short) makes `short`: the long side in
    proportion, rounded down."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def resized_centre_crops(
    images: list[torch.Tensor],
    size: int,
    crop_ratio: float,
    filters: list[str] | str = "bicubic",
    squash: bool = False,
    max_bytes: int = 1 << 30,
) -> torch.Tensor:
    """timm's evaluation view of each image, as Pillow computes it: the short side (`squash`: both sides) resized
    to floor(size / crop_ratio), the long side in proportion (torchvision's Resize), then the centre size x size
    (torchvision's CenterCrop); uint8 (B, C, size, size)."""
    scaled = math.floor(size / crop_ratio)
    dims = [
        (scaled, scaled) if squash else resized_size(int(image.shape[2]), int(image.shape[1]), scaled)
        for image in images
    ]
    out = torch.tensor(dims, dtype=torch.float64)  # (width, height) of the whole resized image
    offsets = torch.tensor([(round((w - size) / 2.0), round((h - size) / 2.0)) for w, h in dims])
    return resized_windows(images, whole_boxes(images), out, offsets, size, filters, None, max_bytes)


def whole_boxes(images: list[torch.Tensor]) -> torch.Tensor:
    """The box (left, top, width, height) of each whole image (C, H, W)."""
    return torch.tensor([(0, 0, image.shape[2], image.shape[1]) for image in images], dtype=torch.float64)


def resized_windows(
    images: list[torch.Tensor],
    boxes: torch.Tensor,
    out: torch.Tensor,
    offsets: torch.Tensor,
    size: int,
    filters: list[str] | str = "bicubic",
    flips: torch.Tensor | None = None,
    max_bytes: int = 1 << 30,
) -> torch.Tensor:
    """Each uint8 image's box (left, top, width, height) resized to out (width, height) with Pillow's filter, and
    the size x size window from `offsets` (column, row) of it kept, mirrored where `flips`: uint8 (B, C, size,
    size). A window may reach past the resized image by less than its sides: it reads it reflected there (DeiT
    III's Simple Random Crop: torchvision's Resize, then RandomCrop padded by reflection)."""
    out, offsets = out.to("cpu", torch.float64), offsets.to("cpu", torch.float64)
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
    across = taps(boxes[:, 0], boxes[:, 2], widths, out[:, 0], filters, offsets[:, 0], size)
    down = taps(boxes[:, 1], boxes[:, 3], heights, out[:, 1], filters, offsets[:, 1], size)
    result = torch.empty(b, channels.pop(), size, size, dtype=torch.uint8, device=device)
    rows_first = vertical_first(heights, widths, out[:, 1], out[:, 0])
    for order in (False, True):
        chosen = (rows_first == order).nonzero().squeeze(1).tolist()
        for group in _groups(chosen, across.reach, down.reach, result.shape[1], max_bytes):
            span_x, span_y = int(across.reach[group].max()), int(down.reach[group].max())
            dtype = exact_dtype(device)
            wx = axis_weights(across, filters, group, span_x, device, dtype)
            wy = axis_weights(down, filters, group, span_y, device, dtype)
            mirrored = flips[group].to(device)
            wx = torch.where(mirrored[:, None, None], wx.flip(1), wx)
            pixels = [images[i] for i in group]
            result[group] = _resample(pixels, across.first[group], down.first[group], wx, wy, order)
    return result


def vertical_first(heights: torch.Tensor, widths: torch.Tensor, out_h, out_w) -> torch.Tensor:
    """Which images Pillow resamples vertically first: from Pillow 13, those losing more than twice as many rows
    as columns (the first pass then works on fewer rows); before it, none. The order moves a pixel by a level at
    most where the two round differently in between."""
    if PILLOW_MAJOR < 13:
        return torch.zeros(len(heights), dtype=torch.bool)
    rows_lost, cols_lost = heights - out_h, widths - out_w
    return (rows_lost > 0) & (rows_lost > 2 * cols_lost)


def _groups(chosen: list[int], reach_x, reach_y, channels: int, max_bytes: int) -> list[list[int]]:
    """The chosen images in groups whose padded float64 copies stay under max_bytes (one image alone may not)."""
    groups, group, widest, tallest = [], [], 0, 0
    for i in chosen:
        w, h = int(reach_x[i]), int(reach_y[i])
        grown = (len(group) + 1) * channels * max(widest, w) * max(tallest, h) * 8
        if group and grown > max_bytes:
            groups.append(group)
            group, widest, tallest = [], 0, 0
        group.append(i)
        widest, tallest = max(widest, w), max(tallest, h)
    return groups + ([group] if group else [])


def _resample(images: list[torch.Tensor], xs, ys, wx, wy, vertical_first: bool) -> torch.Tensor:
    """One group: each image's read region into a zero-padded batch, then the two passes in Pillow's order
    (weights past an image's own region are zero, so the padding is never read)."""
    device, dtype = wx.device, wx.dtype
    span_x, span_y = wx.shape[2], wy.shape[2]
    x = torch.zeros(len(images), images[0].shape[0], span_y, span_x, dtype=dtype, device=device)
    for k, image in enumerate(images):
        region = image[:, ys[k] : ys[k] + span_y, xs[k] : xs[k] + span_x]
        x[k, :, : region.shape[1], : region.shape[2]] = region
    across = wx.transpose(1, 2)[:, None]  # (G, 1, span_x, size)
    down = wy[:, None]  # (G, 1, size, span_y)
    with _full_float32():
        out = _round(down @ x) @ across if vertical_first else down @ _round(x @ across)
    return _round(out).to(torch.uint8)


def _round(x: torch.Tensor) -> torch.Tensor:
    """A pass's sums (in units of 2^-22) to 8-bit values as Pillow rounds them: halves up, clipped."""
    return torch.floor_(x.add_(1 << (PRECISION_BITS - 1)).mul_(2.0**-PRECISION_BITS)).clamp_(0, 255)
