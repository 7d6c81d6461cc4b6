"""Pictures: training curves and attention heat maps. matplotlib is imported only when a picture is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F


def _save(fig, path: str | Path) -> None:
    """The picture written atomically: an interrupted run never leaves half a PNG."""
    from .files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    return plt


def plot_curves(logs: dict[str, list[dict]], path: str | Path, keys: tuple[str, ...] = ("test_acc1", "train_loss")):
    """One panel per key, one line per run (epoch on x). `logs`: run name -> log.jsonl lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, lines in logs.items():
            points = [(line["epoch"], line[key]) for line in lines if key in line]
            if points:
                ax.plot(*zip(*points), label=name, marker="." if len(points) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"test_acc1": "test top-1 (%)", "train_loss": "training loss"}.get(key, key))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_label_curve(points: list[dict], path: str | Path, title: str = "") -> None:
    """Test top-1 against labelled images per class (log x axis), one line per method. `points`: dicts with
    labels_per_class, method and acc1."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    methods = list(dict.fromkeys(p["method"] for p in points))
    for method in methods:
        line = sorted((p["labels_per_class"], p["acc1"]) for p in points if p["method"] == method)
        ax.plot(*zip(*line), marker="o", label=method, linestyle="--" if method.startswith("teacher") else "-")
    counts = sorted({p["labels_per_class"] for p in points})
    ax.set_xscale("log")
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def upsample_map(patch_map: torch.Tensor, size: int) -> torch.Tensor:
    """A distribution over a g x g grid (g*g,) -> a (size, size) picture scaled to [0, 1]."""
    grid = math.isqrt(patch_map.numel())
    image = patch_map.float().reshape(1, 1, grid, grid)
    image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    image = image - image.min()
    return image / image.max().clamp_min(1e-12)


def attention_grid(images: torch.Tensor, columns: dict[str, torch.Tensor], path: str | Path, titles: list[str]):
    """Rows: images (N, H, W) or (N, H, W, 3) in [0, 1]; first column the image, then one heat map per entry of
    `columns` ((N, P) distributions over patches), overlaid on the image."""
    plt = _pyplot()
    n, size = images.shape[0], images.shape[2]
    images = images.detach().cpu().numpy()
    fig, axes = plt.subplots(n, 1 + len(columns), figsize=(1.7 * (1 + len(columns)), 1.8 * n), squeeze=False)
    for row in range(n):
        axes[row][0].imshow(images[row], cmap="gray")
        axes[row][0].set_title(titles[row], fontsize=8, parse_math=False)  # file and class names: text, not TeX
        for col, (name, maps) in enumerate(columns.items(), start=1):
            axes[row][col].imshow(images[row], cmap="gray")
            axes[row][col].imshow(upsample_map(maps[row], size).cpu().numpy(), cmap="jet", alpha=0.5)
            if row == 0:
                axes[row][col].set_title(name, fontsize=8, parse_math=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(matrix: torch.Tensor, class_names: list[str], path: str | Path) -> None:
    """Rows: true class, columns: predicted; each row normalised to the share of its class's images."""
    plt = _pyplot()
    rows = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(class_names)
    side = min(2 + 0.45 * n, 40)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    shown = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=8, parse_math=False)
        ax.set_yticks(range(n), class_names, fontsize=8, parse_math=False)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        int(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
