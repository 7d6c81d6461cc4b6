"""`deit predict`: top-k classes of images with a trained model, prepared as its training data was evaluated.

Preprocessing comes from the weights (`model.data_config`, saved by `deit train`): input size, eval crop ratio,
interpolation, mean and std, class names. Weights without it (official, timm, HF) get ImageNet's preprocessing
and class indices as names. An unreadable or non-image file is reported in one line and skipped; the others are
still predicted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .data.datasets import GRAY_MEAN, GRAY_STD, IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD
from .data.transforms import build_transform

log = logging.getLogger("deit")


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict:
        return {"path": self.path, "topk": [{"label": label, "probability": round(p, 6)}
                                            for label, p in zip(self.labels, self.probabilities)]}  # fmt: skip


def image_files(paths: list[str]) -> list[Path]:
    """Files as given, and the images under folders (sorted); a path that does not exist is a ValueError."""
    files = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"no such file or folder: {path}")
    return files


def preprocessing(model: torch.nn.Module):
    """The eval transform of the model's training data, and its class names."""
    hp = model.hparams
    data = getattr(model, "data_config", None) or {}
    gray = hp["in_chans"] == 1
    mean = tuple(data.get("mean") or (GRAY_MEAN if gray else IMAGENET_MEAN))
    std = tuple(data.get("std") or (GRAY_STD if gray else IMAGENET_STD))
    transform = build_transform(False, img_size=hp["img_size"], mean=mean, std=std,
                                interpolation=data.get("interpolation", "bicubic"),
                                eval_crop_ratio=data.get("eval_crop_ratio", 0.875))  # fmt: skip
    names = list(data.get("class_names") or [str(i) for i in range(model.num_classes)])
    return transform, names, "L" if gray else "RGB"


@torch.inference_mode()
def predict(model: torch.nn.Module, files: list[Path], *, topk: int = 5, batch_size: int = 64,
            show_progress: bool = False) -> tuple[list[Prediction], list[str]]:  # fmt: skip
    """Predictions for the readable files, and one error line for each file that could not be read."""
    from .engine import progress

    model = model.eval()
    transform, names, mode = preprocessing(model)
    k = min(topk, len(names))
    predictions, errors = [], []
    device = next(model.parameters()).device
    bar, task = progress("predict", len(files), show_progress)
    with bar:
        for start in range(0, len(files), batch_size):
            batch, paths = [], []
            for path in files[start : start + batch_size]:
                try:
                    with Image.open(path) as image:
                        batch.append(transform(image.convert(mode)))
                    paths.append(path)
                except (UnidentifiedImageError, OSError, ValueError) as e:
                    errors.append(f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                bar.advance(task)
            if not batch:
                continue
            probs = model(torch.stack(batch).to(device)).float().softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            for path, v, i in zip(paths, values.tolist(), indices.tolist()):
                predictions.append(Prediction(str(path), [names[j] for j in i], v))
    return predictions, errors
