"""`deit eval`: top-1 / top-5, per-class accuracy and the confusion matrix of a trained model on a data set."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .data import build_dataset, canonical_name
from .data.preprocess import preprocessing
from .data.sampling import collate_readable
from .data.shards.streams import EvalStream, ShardSet
from .data.shards.streams import loader as shard_loader
from .engine import top5_hits
from .files import write_text
from .stopping import loader_worker_init


def validation_batches(
    model: torch.nn.Module, data_set: str, data_path: str | None, *, batch_size: int = 128, num_workers: int = 2
):
    """The validation split of a data set as (images, targets, unreadable) batches, prepared as the model's training
    data was evaluated (its saved data config: size, crop ratio, interpolation, normalisation, intensity), and its
    class names. Every evaluation of a trained model reads its images through here, or through the same transform
    (`deit predict`), so that each gives the top-1 its run logged."""
    prep = preprocessing(model)
    val, info = build_dataset(
        canonical_name(data_set), data_path, False, grayscale=model.hparams["in_chans"] == 1, intensity=prep.intensity
    )
    names = prep.class_names
    if isinstance(val, ShardSet) and val.split.counted and info.num_classes <= model.num_classes:
        info.num_classes, info.class_names = model.num_classes, names  # they hold class indices only
    if info.num_classes != model.num_classes:
        raise ValueError(
            f"the model predicts {model.num_classes} classes but {data_set} has {info.num_classes}; "
            "evaluate on the data it was trained for"
        )
    saved = getattr(model, "data_config", None) or {}
    if saved.get("class_names") and list(saved["class_names"]) != list(info.class_names):
        raise ValueError(
            f"the model was trained on classes {saved['class_names'][:5]}..., {data_set} has "
            f"{info.class_names[:5]}...; evaluate on the data it was trained for"
        )
    val.transform = prep.transform
    # an unreadable file is left out and counted, never replaced by another image
    options = dict(num_workers=num_workers, worker_init_fn=loader_worker_init)
    if isinstance(val, ShardSet):
        stream = EvalStream(val, rank=0, world_size=1, batch_size=batch_size, workers=num_workers)
        return shard_loader(stream, options), names
    return DataLoader(val, batch_size=batch_size, collate_fn=collate_readable, **options), names


@torch.inference_mode()
def evaluation_report(
    model: torch.nn.Module, data_set: str, data_path: str | None, *, batch_size: int = 128, num_workers: int = 2
) -> dict:
    """Evaluate on the validation split of a data set, preprocessed as the model's training data was."""
    model = model.eval()
    loader, names = validation_batches(model, data_set, data_path, batch_size=batch_size, num_workers=num_workers)
    n = model.num_classes
    confusion = torch.zeros(n, n, dtype=torch.long)
    top5 = unreadable = 0
    device = next(model.parameters()).device
    for images, targets, skipped in loader:
        unreadable += int(skipped)
        if images is None:
            continue
        logits = model(images.to(device)).float().cpu()
        confusion += torch.bincount(targets * n + logits.argmax(1), minlength=n * n).reshape(n, n)
        top5 += int(top5_hits(logits, targets).any(dim=1).sum())
    count = int(confusion.sum())
    if count == 0:
        raise ValueError(f"none of the {unreadable} images of {data_set} could be read")
    per_class = confusion.diag().float() / confusion.sum(1).clamp_min(1)
    return {
        "data_set": data_set,
        "images": count,
        "unreadable": unreadable,
        "acc1": 100.0 * float(confusion.diag().sum()) / count,
        "acc5": 100.0 * top5 / count,
        "per_class_acc1": {names[i]: round(100.0 * float(per_class[i]), 3) for i in range(n)},
        "confusion": confusion.tolist(),
        "class_names": names,
    }


def write_report(report: dict, out: str | Path) -> list[Path]:
    """eval.json and confusion.png in `out`."""
    from .viz import plot_confusion

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "eval.json", json.dumps(report, indent=2) + "\n")
    plot_confusion(torch.tensor(report["confusion"]), report["class_names"], out / "confusion.png")
    return [out / "eval.json", out / "confusion.png"]
