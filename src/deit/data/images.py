"""Image files: finding them under folders, and reading one as the 8-bit image the transforms take.

Reading never takes the process down: a file that is not an image, a truncated one, or a decompression bomb (more
pixels than Pillow's limit, `Image.MAX_IMAGE_PIXELS`) is a `ValueError` naming the file. Images of more than 8 bits
(16-bit PNG and TIFF, 32-bit integer or float TIFF: X-ray, microscopy) are brought to 8 bits by their values, not
clipped (Pillow's own conversion turns a 16-bit image almost white): `minmax` stretches each image's own range to
0-255, `full` maps the type's whole range (0-65535 for 16 bits, 0-1 for floats).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..messages import first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def read_image(
    path: str | os.PathLike | BinaryIO, mode: str, intensity: str = "minmax", name: str | None = None
) -> Image.Image:
    """The image at `path` (or in an open binary file called `name`) in `mode` ("L" or "RGB"), decoded;
    ValueError naming the file when it cannot be."""
    try:
        with Image.open(path) as image:
            return decoded(image, mode, intensity)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # Pillow raises many types for damaged files: OSError, SyntaxError, struct.error, ...
        raise ValueError(f"{name or path}: not a readable image ({first_line(e)})") from None


def decoded(image: Image.Image, mode: str, intensity: str) -> Image.Image:
    """An opened image decoded, in `mode`: more than 8 bits scaled to 8 by `intensity` first."""
    image.load()
    if image.mode in HIGH_BIT_MODES:
        image = Image.fromarray(to_8bit(np.asarray(image), intensity), "L")
    return image.convert(mode)


def channels_first(pixels: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) pixels -> a contiguous (C, H, W) array (a view where it already is one)."""
    return np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))


class LazyJpeg:
    """A JPEG read but not decoded until its crop box is known (`read_lazy`, for the loader path's random resized
    crop): where the box is at least twice the output size both ways, libjpeg decodes at 1/2, 1/4 or 1/8 scale
    (Pillow's draft mode: DCT scaling, several times less work on large photos) and the box is scaled with it."""

    def __init__(self, data: bytes, mode: str, size: tuple[int, int], name: str):
        self.data, self.mode, self.size, self.name = data, mode, size, name

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def decode(self, box: tuple[float, float, float, float], out: tuple[int, int]):
        """(image, box in its pixels) for a crop `box` (left, top, right, bottom) resized to `out` (width, height);
        ValueError naming the file when it cannot be decoded."""
        left, top, right, bottom = box
        reduce = min((right - left) / out[0], (bottom - top) / out[1])
        try:
            with Image.open(io.BytesIO(self.data)) as image:
                if reduce >= 2:
                    drafted = image.draft(image.mode, (-(-self.size[0] // reduce), -(-self.size[1] // reduce)))
                    if drafted is not None:
                        s = drafted[1][2] / self.size[0]  # 1 / the scale libjpeg decodes at
                        box = (left * s, top * s, right * s, bottom * s)
                image.load()
                return image.convert(self.mode), box
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise ValueError(f"{self.name}: not a readable image ({first_line(e)})") from None


def read_lazy(
    path: str | os.PathLike | io.BytesIO,
    mode: str,
    intensity: str = "minmax",
    name: str | None = None,
    smallest: int = 0,
):
    """`read_image`, but an 8-bit JPEG whose sides are both at least `smallest` comes back as a `LazyJpeg`
    (decoded by its crop); ValueError naming the file when it cannot be read. A JPEG without its end marker is
    decoded here, and refused as `read_image` refuses it."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG" and image.mode in ("L", "RGB") and min(image.size) >= smallest:
                data = path.getvalue() if isinstance(path, io.BytesIO) else Path(path).read_bytes()
                if whole_jpeg(data):
                    return LazyJpeg(data, mode, image.size, name or str(path))
            return decoded(image, mode, intensity)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise ValueError(f"{name or path}: not a readable image ({first_line(e)})") from None


def whole_jpeg(data: bytes) -> bool:
    """Whether a JPEG's end-of-image marker is there: a truncated file lacks it (libjpeg would fill the missing rows
    where Pillow refuses the file)."""
    return data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9")


def to_8bit(values: np.ndarray, intensity: str) -> np.ndarray:
    """A high-bit-depth or float image as uint8: its own range stretched (`minmax`) or the type's (`full`: 0-1 for
    floats, 0-65535 for integers that fit 16 bits, else the 32-bit range)."""
    floating = values.dtype.kind == "f"
    if values.size == 0:
        return np.zeros(values.shape, np.uint8)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if intensity == "full":
        top = 1.0 if floating else 65535.0 if values.max() <= 65535 else 2.0**31 - 1
        scaled = values / top
    elif intensity == "minmax":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    else:
        raise ValueError(f"intensity={intensity!r}: minmax or full")
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, and the images under folders (sorted); a path that does not exist is a ValueError."""
    files = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += [Path(f) for f in walk_files(path) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"no such file or folder: {path}")
    return files


def walk_files(root: str | os.PathLike) -> Iterator[str]:
    """Every file under `root`, in sorted order, following symbolic links to folders but entering each real
    folder once and never one that holds `root` (a link back up the tree): a link loop neither repeats images
    nor recurses forever, nor pulls a sibling class's images in."""
    top = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        real = os.path.realpath(folder)
        loops_back = folder != os.fspath(root) and (real == top or top.startswith(real.rstrip(os.sep) + os.sep))
        if loops_back or (st.st_dev, st.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders.sort()
        for name in sorted(names):
            yield os.path.join(folder, name)
