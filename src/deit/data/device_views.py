"""The device input path: loader processes read each training image's bytes and draw its crop box and mirroring; the
training device decodes the JPEGs of a batch at once (nvJPEG on a GPU, through torchvision) and crops them all at
once (`resample.resized_windows`); the batch augmentation (`batch_aug.BatchAugment`) does the rest. A run's
evaluation on this path decodes the validation files there too, resized and centre-cropped as the loader path's
evaluation transform does (`DeviceEvalBatches`).

The crop and mirroring of a view are drawn by the very calls of the loader path (`transforms.ResizedCrop` or
`transforms.SimpleCrop`, `transforms.HorizontalFlip`) under the view's seed, from the size in the file's header: the
same boxes for the same seed. What the device's decoder does not take (PNG, TIFF, 16-bit, CMYK, progressive JPEGs, a
JPEG without its end marker) is decoded by the loader path's reader (`images.read_image`) in the loader process and
handed over as pixels; a JPEG the device refuses is decoded by it in the training process. Both are counted. An
unreadable file is passed over as on the loader path (the data set's substitution); one that only the device finds
unreadable is replaced by the batch's previous image, counted with the skipped.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..messages import first_line
from .images import channels_first, decoded, read_image, whole_jpeg
from .resample import resized_centre_crops, resized_windows
from .transforms import HorizontalFlip, ResizedCrop, SimpleCrop

log = logging.getLogger("deit")

INPUT_PATHS = ("auto", "loader", "device")
"""Where a run's image files are decoded and cropped: `loader` processes (per image, Pillow), the training
`device` (a batch at a time), or `auto`: the device on a GPU with --batch-aug, else the loader."""

DECODE_BYTES = 1 << 30
"""Decoded pixels (bytes) a device decodes at once, and float copies it crops at once: a batch of large photos
is taken in groups under this."""


@dataclass
class Encoded:
    """One training image as a loader process hands it over: its JPEG bytes (`jpeg`) or its pixels (C, H, W)
    decoded there, its size, and the view drawn for it."""

    data: np.ndarray  # uint8: the file's bytes, or pixels (C, H, W)
    jpeg: bool
    width: int
    height: int
    name: str = ""
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, top, width, height
    resized: tuple[int, int] = (0, 0)  # width, height the box is resized to
    window: tuple[int, int] = (0, 0)  # left, top of the view in the resized box (< 0: reflected)
    flip: bool = False
    interpolation: str = "bicubic"


def read_encoded(source: str | os.PathLike | io.BytesIO, mode: str, intensity: str = "minmax", name: str | None = None):
    """A training image for the device path: a JPEG the device decodes as its bytes, anything else decoded here as
    the loader path's reader decodes it (`images.read_image`); ValueError naming the file, in that reader's words,
    when it cannot be read."""
    name = name or str(source)
    try:
        data = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else source.getvalue()
        with Image.open(io.BytesIO(data)) as image:  # the header only, until decoded here
            if (
                image.format == "JPEG"
                and image.mode in ("L", "RGB")
                and not image.info.get("progressive")
                and not image.info.get("progression")
                and whole_jpeg(data)
            ):
                return Encoded(np.frombuffer(data, dtype=np.uint8), True, image.width, image.height, name)
            pixels = decoded(image, mode, intensity)
            return Encoded(channels_first(np.asarray(pixels)), False, pixels.width, pixels.height, name)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # Pillow raises many types for damaged files
        raise ValueError(f"{name}: not a readable image ({first_line(e)})") from None


class DrawView:
    """The device path's per-image transform: the loader path's crop and mirroring drawn for an `Encoded` (the
    same calls, in the same order, as `transforms.crop_transform`): a random resized crop's box, resized to the
    view; or DeiT III's simple crop, the whole image resized and a window of it."""

    def __init__(self, crop: ResizedCrop | SimpleCrop, flip: HorizontalFlip):
        self.crop, self.flip = crop, flip

    def __call__(self, image: Encoded) -> Encoded:
        if isinstance(self.crop, SimpleCrop):
            resized, window, mode = self.crop.draw(image.width, image.height)
            box = (0, 0, image.width, image.height)
        else:
            box, mode = self.crop.draw(image.width, image.height)
            resized, window = (self.crop.size[1], self.crop.size[0]), (0, 0)
        flip = self.flip.draw()  # after the crop's draws, as in crop_transform
        return replace(image, box=box, resized=resized, window=window, flip=flip, interpolation=mode.value)

    def __repr__(self) -> str:
        return f"DrawView({self.crop!r}, {self.flip!r})"


@dataclass
class EncodedBatch:
    """A batch of `Encoded` images as one flat uint8 tensor (shared with the training process, pinned for the
    device) and their shapes and views; `to` leaves it on the host, where the decoder reads it."""

    data: torch.Tensor
    offsets: list[int]
    jpeg: list[bool]
    shapes: list[tuple[int, int, int]]  # pixels (C, H, W); JPEGs (0, H, W)
    boxes: torch.Tensor  # (B, 4) left, top, width, height
    resized: torch.Tensor  # (B, 2) width, height
    windows: torch.Tensor  # (B, 2) left, top
    flips: torch.Tensor  # (B,) bool
    interpolations: list[str]
    names: list[str]

    @classmethod
    def of(cls, images: list[Encoded]) -> EncodedBatch:
        offsets = np.cumsum([0] + [image.data.size for image in images]).tolist()
        data = torch.from_numpy(np.concatenate([image.data.reshape(-1) for image in images]))
        return cls(
            data,
            offsets,
            [image.jpeg for image in images],
            [(0 if image.jpeg else image.data.shape[0], image.height, image.width) for image in images],
            torch.tensor([image.box for image in images], dtype=torch.float64),
            torch.tensor([image.resized for image in images], dtype=torch.float64),
            torch.tensor([image.window for image in images], dtype=torch.float64),
            torch.tensor([image.flip for image in images]),
            [image.interpolation for image in images],
            [image.name for image in images],
        )

    def __len__(self) -> int:
        return len(self.jpeg)

    def item(self, i: int) -> torch.Tensor:
        """Image i's bytes (a JPEG) or pixels (C, H, W)."""
        flat = self.data[self.offsets[i] : self.offsets[i + 1]]
        return flat if self.jpeg[i] else flat.view(self.shapes[i])

    def pin_memory(self, device=None) -> EncodedBatch:
        return replace(self, data=self.data.pin_memory())

    def to(self, *args, **kwargs) -> EncodedBatch:
        return self


class DeviceEvalBatches:
    """An evaluation loader of encoded images -> (images, targets, unreadable) batches as the loader path's
    evaluation transform makes them (timm's resize and centre crop, `resample.resized_centre_crops`, then
    ToTensor and Normalize's float32 operations), decoded and prepared on the device. An image nothing reads is
    left out and counted, never replaced."""

    def __init__(self, loader, decoder: DeviceDecoder, *, crop_ratio: float, interpolation: str, mean, std):
        self.loader, self.decoder, self.crop_ratio, self.interpolation = loader, decoder, crop_ratio, interpolation
        device = decoder.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, targets, unreadable in self.loader:
            if images is None:
                yield None, None, unreadable
                continue
            pixels = self.decoder.decode(images)
            keep = [i for i, p in enumerate(pixels) if p is not None]
            unreadable = unreadable + len(pixels) - len(keep)
            if not keep:
                yield None, None, unreadable
                continue
            kept = [pixels[i] for i in keep]
            try:
                crops = resized_centre_crops(kept, self.decoder.size, self.crop_ratio, self.interpolation)
            except torch.OutOfMemoryError:
                raise self.decoder.out_of_memory("resizing", kept) from None
            x = crops.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)
            yield x, targets[torch.tensor(keep)], unreadable


class DeviceDecoder:
    """An `EncodedBatch` -> its crops, uint8 (B, C, size, size) on `device`: JPEGs decoded there in groups,
    pixels copied, every crop resampled at once. Counts the images decoded on the CPU and those replaced."""

    def __init__(self, size: int, channels: int, device: torch.device, max_bytes: int = DECODE_BYTES):
        self.size, self.channels, self.device, self.max_bytes = size, channels, torch.device(device), max_bytes
        self.mode = "L" if channels == 1 else "RGB"
        self.counts = {"cpu_decoded": 0, "unreadable": 0}

    def __repr__(self) -> str:
        return f"DeviceDecoder(size={self.size}, mode={self.mode}, resample=Pillow's, batched)"

    def decode(self, batch: EncodedBatch) -> list[torch.Tensor | None]:
        """Each image's pixels (C, H, W) on the device, in the model's mode; None for one nothing could read."""
        pixels: list[torch.Tensor | None] = [None] * len(batch)
        for i in range(len(batch)):
            if not batch.jpeg[i]:
                pixels[i] = self._channels(batch.item(i).to(self.device, non_blocking=True))
                self.counts["cpu_decoded"] += 1
        jpegs = [i for i in range(len(batch)) if batch.jpeg[i]]
        for group in self._groups(batch, jpegs):
            for i, image in zip(group, self._decode(batch, group)):
                pixels[i] = image
        return pixels

    def __call__(self, batch: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(crops, order): order[i] is the image whose crop slot i holds (None when every image was read)."""
        pixels = self.decode(batch)
        order = list(range(len(batch)))
        for i in range(len(batch)):
            if pixels[i] is None:  # nothing could read it: the previous readable image's view in its place
                self.counts["unreadable"] += 1
                order[i] = next(
                    (j for j in [*range(i - 1, -1, -1), *range(i + 1, len(batch))] if pixels[j] is not None), -1
                )
                if order[i] < 0:
                    raise ValueError(f"none of a batch's {len(batch)} images could be read ({batch.names[0]}, ...)")
        pixels = [pixels[j] for j in order]
        try:
            crops = resized_windows(
                pixels,
                batch.boxes[order],
                batch.resized[order],
                batch.windows[order],
                self.size,
                [batch.interpolations[j] for j in order],
                batch.flips[order],
                self.max_bytes,
            )
        except torch.OutOfMemoryError:
            raise self.out_of_memory("cropping", pixels) from None
        changed = order != list(range(len(batch)))
        return crops, torch.tensor(order) if changed else None

    def out_of_memory(self, doing: str, images: list) -> ValueError:
        """The line for a device that ran out of memory `doing` images (pixels (C, H, W), or their shapes)."""
        sides = [tuple(image.shape if isinstance(image, torch.Tensor) else image)[1:] for image in images]
        h, w = max(sides, key=lambda side: side[0] * side[1])
        return ValueError(
            f"the {self.device} ran out of memory {doing} {len(images)} images (the largest {w}x{h}): lower "
            "--batch-size, or decode in the loader processes (--input-path loader)"
        )

    def take_counts(self) -> dict[str, int]:
        """The counts since the last call, then zero."""
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts

    def _groups(self, batch: EncodedBatch, jpegs: list[int]) -> list[list[int]]:
        """JPEGs in groups whose decoded pixels stay under max_bytes (a larger image alone)."""
        groups, group, held = [], [], 0
        for i in jpegs:
            _, h, w = batch.shapes[i]
            need = 3 * h * w
            if group and held + need > self.max_bytes:
                groups.append(group)
                group, held = [], 0
            group.append(i)
            held += need
        return groups + ([group] if group else [])

    def _decode(self, batch: EncodedBatch, group: list[int]) -> list[torch.Tensor | None]:
        """A group's JPEGs decoded on the device together, else one by one; one the device refuses is decoded by
        Pillow here (None if that fails too)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [batch.item(i) for i in group]
        try:
            # RGB, which every device decoder gives (a gray JPEG's Y repeated, as Pillow's conversion repeats it)
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            return [self._channels(image) for image in decoded]
        except torch.OutOfMemoryError:
            raise self.out_of_memory("decoding", [batch.shapes[i] for i in group]) from None
        except RuntimeError:
            if len(group) == 1:
                return [self._fallback(batch, group[0])]
            return [image for i in group for image in self._decode(batch, [i])]

    def _fallback(self, batch: EncodedBatch, i: int) -> torch.Tensor | None:
        try:
            image = read_image(io.BytesIO(batch.item(i).numpy().tobytes()), self.mode, name=batch.names[i])
        except ValueError as e:
            log.warning(f"skipping unreadable image {e}")
            return None
        self.counts["cpu_decoded"] += 1
        return self._channels(torch.from_numpy(channels_first(np.asarray(image))))

    def _channels(self, image: torch.Tensor) -> torch.Tensor:
        """A decoded image (1 or 3 channels) in the model's mode, as Pillow converts: gray to RGB repeats the
        channel; RGB to gray is ITU-R 601-2 luma in Pillow's fixed point."""
        image = image.to(self.device, non_blocking=True)
        if image.shape[0] == self.channels:
            return image
        if self.channels == 3:
            return image.expand(3, -1, -1)
        rgb = image.to(torch.int32)
        luma = (rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16
        return luma.to(torch.uint8)[None]
