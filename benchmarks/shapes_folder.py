"""Write a folder of small 16-bit grayscale images in train/ and val/ class folders, as a user's scientific or
inspection images come: eight kinds of shape at random place, size, angle and contrast, on an uneven background,
blurred and noisy. None of deit's built-in sets; the same files for the same seed.

    python benchmarks/shapes_folder.py OUT [--train-per-class 400] [--val-per-class 100] [--size 36] [--seed 0]
    deit demo --data-set folder --data-path OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("disc", "ring", "square", "triangle", "cross", "bar", "pair", "crescent")


def _shape(kind: str, u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (negative inside) of one shape of radius about r, in coordinates centred on it."""
    if kind == "disc":
        return np.hypot(u, v) - r
    if kind == "ring":
        return np.abs(np.hypot(u, v) - r) - r * rng.uniform(0.18, 0.3)
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) - r * 0.85
    if kind == "triangle":
        d = [u * np.cos(a) + v * np.sin(a) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        return np.maximum.reduce(d) - r * 0.55
    if kind == "cross":
        w = r * rng.uniform(0.22, 0.32)
        return np.minimum(np.maximum(np.abs(u) - r, np.abs(v) - w), np.maximum(np.abs(v) - r, np.abs(u) - w))
    if kind == "bar":
        return np.maximum(np.abs(u) - r * 1.2, np.abs(v) - r * rng.uniform(0.2, 0.35))
    if kind == "pair":
        s = r * 0.55
        return np.minimum(np.hypot(u - s, v), np.hypot(u + s, v)) - r * 0.42
    if kind == "crescent":
        return np.maximum(np.hypot(u, v) - r, -(np.hypot(u - r * 0.45, v) - r * 0.8))
    raise ValueError(kind)


def image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) uint16 image of `kind`."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    r = size * rng.uniform(0.14, 0.3)
    cx, cy = rng.uniform(r, size - r, 2)
    a = rng.uniform(0, 2 * np.pi)
    u = (x - cx) * np.cos(a) + (y - cy) * np.sin(a)
    v = -(x - cx) * np.sin(a) + (y - cy) * np.cos(a)
    edge = rng.uniform(0.6, 1.6)  # blur: the width of the shape's edge, in pixels
    inside = 1 / (1 + np.exp(_shape(kind, u, v, r, rng) / edge))
    gx, gy = rng.normal(0, 0.25, 2)
    background = 0.3 + gx * (x / size - 0.5) + gy * (y / size - 0.5)
    contrast = rng.choice([-1, 1]) * rng.uniform(0.15, 0.45)
    picture = background + contrast * inside + rng.normal(0, rng.uniform(0.04, 0.12), (size, size))
    for _ in range(rng.integers(0, 3)):  # specks and dust
        px, py = rng.uniform(0, size, 2)
        picture += rng.uniform(-0.3, 0.3) * np.exp(-((x - px) ** 2 + (y - py) ** 2) / rng.uniform(0.5, 3))
    return (np.clip(picture, 0, 1) * 65535).round().astype(np.uint16)


def write(out: Path, train_per_class: int, val_per_class: int, size: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    count = 0
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for kind in CLASSES:
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(image(kind, size, rng)).save(folder / f"{kind}_{i:04d}.png")
                count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train-per-class", type=int, default=400)
    ap.add_argument("--val-per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=36)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = write(args.out, args.train_per_class, args.val_per_class, args.size, args.seed)
    print(f"{n} images in {args.out} ({len(CLASSES)} classes, {args.size} px, 16-bit PNG)")


if __name__ == "__main__":
    main()
