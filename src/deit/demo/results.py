"""What the demo's runs measured, as results.json holds it: the teacher, Table 3's students, the curve of top-1 against
labels, and each distilled student's two heads read alone on the test set."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.datasets import canonical_name
from ..distributed import machine
from .plan import STUDY_ORDER, TEACHER_MODEL, Job, Students, table3_jobs


def gather_results(
    out: Path,
    jobs: list[Job],
    done: dict,
    per_class: int,
    *,
    data_set: str,
    data_path,
    seed: int,
    quick: bool,
    students: Students,
) -> dict:
    """results.json: the teacher, Table 3's students, the curve and the heads."""
    curve, heads = curve_and_heads(out, jobs, done, per_class, data_set, data_path)
    teacher = done["teacher_all"]
    return {
        "data_set": canonical_name(data_set),
        "seed": seed,
        "quick": quick,
        "machine": machine(),
        "student": students.alone,
        "student_epochs": students.epochs,  # None: the demo's rule (`Students.schedule`)
        "teacher": {
            "model": TEACHER_MODEL,
            "acc1": teacher["acc1"],
            "train_seconds": teacher["train_seconds"],
            "n_parameters": teacher["n_parameters"],
        },
        "teacher_cache_seconds": done["cache_all"]["train_seconds"],
        "students": [
            {
                **{k: v for k, v in done[j.name].items() if k not in ("log", "curve")},
                "acc1_by_epoch": [e["test_acc1"] for e in done[j.name]["log"]],
            }
            for j in table3_jobs(jobs)
        ],
        "curve": curve,
        "heads": heads,
        # the training images none could read, as the run that passes over each image once per epoch counted them
        "unreadable_images": max(e.get("skipped_images", 0) for e in done["none_all"]["log"]),
    }


def curve_and_heads(
    out: Path, jobs: list[Job], done: dict, per_class: int, data_set: str, data_path: str | None
) -> tuple[list, list]:
    """Each study run's top-1 at its count of labels; each distilled student's heads read alone."""
    curve, heads = [], []
    prepared: dict = {}  # the test images read once for every student prepared alike
    for job in jobs:
        method = job.row.get("curve")  # the study's runs (soft and the ViT teacher are Table-3 rows alone)
        if method is None:
            continue
        n = job.row["labels"] or per_class
        result = done[job.name]
        point = {"labels_per_class": n, "method": method}
        curve.append({**point, "acc1": result["acc1"], "train_seconds": result["train_seconds"]})
        if job.row.get("teacher"):  # a distilled student
            heads.append({**point, **head_accuracy(out / job.name, data_set, data_path, prepared)})

    def order(p):
        return p["labels_per_class"], STUDY_ORDER.index(p["method"])

    return sorted(curve, key=order), sorted(heads, key=order)


@torch.no_grad()
def head_accuracy(run: Path, data_set: str, data_path: str | None, prepared: dict | None = None) -> dict:
    """Test top-1 (%) of a distilled student's class head, distillation head, and their average (what the model
    answers in eval mode: the top-1 its run logged and `deit eval` gives), on the test images prepared as its run
    evaluated them. `prepared` keeps the test batches of each preparation (the model's input size, channels and
    data config) for the next student."""
    from ..evaluation import validation_batches
    from ..models import create_model

    model = create_model(pretrained=run / "checkpoint.pth").eval()
    prepared = {} if prepared is None else prepared
    key = json.dumps([model.hparams["img_size"], model.hparams["in_chans"], model.data_config], sort_keys=True)
    if key not in prepared:
        loader, _ = validation_batches(model, data_set, data_path, batch_size=500, num_workers=0)
        prepared[key] = [(images, targets) for images, targets, _ in loader if images is not None]
    hits, count = torch.zeros(3), 0
    for images, targets in prepared[key]:
        tokens = model.forward_features(images)
        cls, dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        for i, logits in enumerate((cls, dist, (cls + dist) / 2)):
            hits[i] += (logits.argmax(1) == targets).sum()
        count += len(targets)
    return dict(zip(("class", "distillation", "average"), (round(100 * h.item() / count, 2) for h in hits)))
