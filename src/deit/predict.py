"""`deit predict`: top-k classes of images with a trained model, prepared as its training data was evaluated.

Preprocessing comes from the weights (`model.data_config`, saved by `deit train`): input size, eval crop ratio,
interpolation, mean and std, how images of more than 8 bits are scaled, class names. Weights without it (official,
timm, HF) get ImageNet's preprocessing and class indices as names. An unreadable or non-image file (a decompression
bomb included) is reported in one line and skipped; the others are still predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data.datasets import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD
from .data.images import read_image
from .data.transforms import eval_transform


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "topk": [{"label": label, "probability": round(p, 6)} for label, p in zip(self.labels, self.probabilities)],
        }


@dataclass
class Preprocessing:
    transform: object  # PIL image -> normalised tensor
    class_names: list[str]
    mode: str  # the PIL mode the model reads: "L" or "RGB"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    intensity: str = "minmax"  # how images of more than 8 bits become 8-bit (data/images.py)

    def read(self, path: Path) -> torch.Tensor:
        """An image file as the model's input; ValueError naming the file when it is not a readable image."""
        image = read_image(path, self.mode, self.intensity)
        try:
            return self.transform(image)
        except Exception as e:  # e.g. an image of zero width
            raise ValueError(f"{path}: cannot be prepared for the model ({type(e).__name__}: {e})") from None


def preprocessing(model: torch.nn.Module) -> Preprocessing:
    """The eval transform of the model's training data, its class names and normalisation."""
    hp = model.hparams
    data = getattr(model, "data_config", None) or {}
    gray = hp["in_chans"] == 1
    mean = tuple(data.get("mean") or (GRAY_MEAN if gray else IMAGENET_MEAN))
    std = tuple(data.get("std") or (GRAY_STD if gray else IMAGENET_STD))
    transform = eval_transform(
        hp["img_size"],
        mean=mean,
        std=std,
        interpolation=data.get("interpolation", "bicubic"),
        crop_ratio=data.get("eval_crop_ratio", 0.875),
    )
    names = list(data.get("class_names") or [str(i) for i in range(model.num_classes)])
    return Preprocessing(transform, names, "L" if gray else "RGB", mean, std, data.get("intensity") or "minmax")


@torch.inference_mode()
def predict(
    model: torch.nn.Module, files: list[Path], *, topk: int = 5, batch_size: int = 64, show_progress: bool = False
) -> tuple[list[Prediction], list[str]]:
    """Predictions for the readable files, and one error line for each file that could not be read."""
    from .progress import progress

    model = model.eval()
    prep = preprocessing(model)
    names = prep.class_names
    k = min(topk, len(names))
    predictions, errors = [], []
    device = next(model.parameters()).device
    bar, task = progress("predict", len(files), show_progress)
    with bar:
        for start in range(0, len(files), batch_size):
            batch, paths = [], []
            for path in files[start : start + batch_size]:
                try:
                    batch.append(prep.read(path))
                    paths.append(path)
                except ValueError as e:
                    errors.append(str(e))
                bar.advance(task)
            if not batch:
                continue
            probs = model(torch.stack(batch).to(device)).float().softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            finite = torch.isfinite(probs).all(dim=1)
            if not bool(finite.all()):  # inputs are normalised images: the weights overflow
                largest = max(float(p.abs().max()) for p in model.parameters())
                first = paths[int((~finite).nonzero()[0])]
                raise ValueError(
                    f"the model's outputs are not finite (NaN or inf) for {first}: its weights are "
                    f"damaged (the largest is {largest:.3g}); use another checkpoint"
                )
            for path, v, i in zip(paths, values.tolist(), indices.tolist()):
                predictions.append(Prediction(str(path), [names[j] for j in i], v))
    return predictions, errors
