"""The demo's pictures: curve.png (top-1 against labels), curves.png (training curves), attention.png (where each
model looks)."""

from __future__ import annotations

from pathlib import Path

import torch

from .plan import TEACHER_MODEL, Job, run_name, short_label, table3_jobs
from .report import curve_label


def pictures(out: Path, results: dict, jobs: list[Job], done: dict, data_set: str, data_path) -> None:
    """curve.png, curves.png and attention.png."""
    from ..viz import plot_curves, plot_label_curve

    plot_label_curve(
        [{**p, "method": curve_label(p["method"])} for p in results["curve"]],
        out / "curve.png",
        title=f"{results['data_set']}, seed {results['seed']}",
    )
    logs = {
        "teacher (CNN)": done["teacher_all"]["log"],
        **{j.row["method"]: done[j.name]["log"] for j in table3_jobs(jobs)},
    }
    plot_curves(logs, out / "curves.png")
    heat_maps(out, results["students"], data_set, data_path)


def heat_maps(out: Path, students: list[dict], data_set: str, data_path: str | None, count: int = 4) -> None:
    """attention.png: a few test images, the teacher's activation map and each student's last-block class-token
    attention over the patches."""
    from ..data import build_dataset, eval_transform
    from ..distill.attention import activation_map, patch_attention
    from ..models import create_model
    from ..teachers import load_teacher
    from ..viz import attention_grid

    val, info = build_dataset(data_set, data_path, False)
    val.transform = eval_transform(28, mean=info.mean, std=info.std, crop_ratio=1.0)
    picked, seen = [], set()
    for index, target in enumerate(val.targets):  # the first image of the first `count` classes
        if target not in seen:
            seen.add(target)
            picked.append(index)
        if len(picked) == count:
            break
    x = torch.stack([val[i][0] for i in picked])
    shown = (x[:, 0] * info.std[0] + info.mean[0]).clamp(0, 1)
    teacher = load_teacher(TEACHER_MODEL, out / "teacher_all", num_classes=info.num_classes, in_chans=info.in_chans)
    with torch.no_grad():
        columns = {"teacher (CNN)": activation_map(teacher.model.forward_features(x))}
        for student in students:
            model = create_model(pretrained=out / f"{run_name(student['method'])}_all" / "checkpoint.pth").eval()
            _, rows = model.forward_attention(x, blocks=-1, form="cls")
            columns[short_label(student["method"])] = patch_attention(
                rows[len(model.blocks) - 1], model.num_prefix_tokens, per_head=False
            )
    attention_grid(shown, columns, out / "attention.png", [info.class_names[val.targets[i]] for i in picked])
