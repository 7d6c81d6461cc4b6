"""`deit predict`: top-k classes of images with a trained model, prepared as its training data was evaluated.

An unreadable or non-image file (a decompression bomb included) is reported in one line and skipped; the others are
still predicted. The preparation of the images: `data/preprocess.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data.preprocess import preprocessing


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict:
        return {"path": self.path, "topk": topk_json(self.labels, self.probabilities)}


def topk_json(labels: list[str], probabilities: list[float]) -> list[dict]:
    """The top-k as `deit predict --json` and `deit serve` write it."""
    return [{"label": label, "probability": round(p, 6)} for label, p in zip(labels, probabilities)]


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
            ranked = rank(model, torch.stack(batch).to(device), names, k, paths)
            predictions += [Prediction(str(path), labels, probs) for path, (labels, probs) in zip(paths, ranked)]
    return predictions, errors


@torch.inference_mode()
def rank(model: torch.nn.Module, batch: torch.Tensor, names: list[str], k: int, sources: list) -> list[tuple]:
    """(top-k labels, their probabilities) for each prepared image of `batch`; ValueError naming the first of
    `sources` whose outputs are not finite (damaged weights)."""
    probs = model(batch).float().softmax(dim=1)
    values, indices = probs.topk(k, dim=1)
    finite = torch.isfinite(probs).all(dim=1)
    if not bool(finite.all()):  # inputs are normalised images: the weights overflow
        largest = max(float(p.abs().max()) for p in model.parameters())
        first = sources[int((~finite).nonzero()[0])]
        raise ValueError(
            f"the model's outputs are not finite (NaN or inf) for {first}: its weights are "
            f"damaged (the largest is {largest:.3g}); use another checkpoint"
        )
    return [([names[j] for j in i], v) for v, i in zip(values.tolist(), indices.tolist())]
