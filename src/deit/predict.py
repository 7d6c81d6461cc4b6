"""`deit predict`: top-k classes of images with a trained model, prepared as its training data was evaluated.

An unreadable or non-image file (a decompression bomb included) is reported in one line and skipped; the others are
still predicted. The preparation of the images: `data/preprocess.py`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable
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
    model: torch.nn.Module,
    files: Iterable[Path | tuple[str, bytes | ValueError]],
    *,
    topk: int = 5,
    batch_size: int = 64,
    show_progress: bool = False,
    total: int | None = None,
) -> tuple[list[Prediction], list[str]]:
    """Predictions for the readable images, and one error line for each that could not be read. An image is a file,
    or (name, its bytes) (a sample of a shard; (name, ValueError) for one its reader could not give); `total`: how
    many, for the progress bar, when `files` has no len."""
    from .progress import progress

    model = model.eval()
    prep = preprocessing(model)
    names = prep.class_names
    k = min(topk, len(names))
    predictions, errors = [], []
    device = next(model.parameters()).device
    bar, task = progress("predict", total if total is not None else len(files), show_progress)
    images = iter(files)
    with bar:
        while chunk := list(itertools.islice(images, batch_size)):
            batch, paths = [], []
            for source in chunk:
                path = source[0] if isinstance(source, tuple) else source
                try:
                    if isinstance(source, tuple) and isinstance(source[1], Exception):
                        raise source[1]
                    batch.append(
                        prep.read(io.BytesIO(source[1]), name=path) if isinstance(source, tuple) else prep.read(path)
                    )
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
