"""`deit demo`'s run: the study's jobs side by side in the demo's own folder, then results.json, report.md and the
pictures."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..data.datasets import BUILTINS, build_dataset, canonical_name
from ..files import LOCK, FolderLock, write_text
from .lanes import train_side_by_side
from .pictures import pictures
from .plan import LABELS, QUICK, QUICK_LABELS, Students, label_counts, study_jobs, vit_teacher_job
from .report import curve_table, report, report_table, unreadable_line
from .results import gather_results

MARKER = ".deit-demo"


DEMO_FILES = ("report.md", "results.json", "curve.png", "curves.png", "attention.png", MARKER)


def run_demo(
    *,
    data_set: str = "mnist5k",
    data_path: str | None = None,
    output_dir: str | Path = "demo_output",
    quick: bool = False,
    seed: int = 0,
    vit_teacher: bool = False,
    num_workers: int = 2,
    lanes: int | None = None,
    student: str | None = None,
    epochs: int | None = None,
) -> dict:
    """Train the teachers and the students; write report.md, results.json, curve.png, curves.png and
    attention.png.

    `lanes`: processes at once (default: one per CPU core, at most four). `student`: a registered DeiT (or its
    distilled twin) in place of the demo's; `epochs`: the students' epochs at every count of labels in place of the
    demo's rule. The demo owns its folder while it runs (a lock); stopped (Ctrl-C, SIGTERM), it stops its processes
    too.
    """
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    students = Students.of(student, epochs)
    out = Path(output_dir)
    with FolderLock(out, "deit demo", owns=DEMO_FILES):
        _prepare(out)
        return _demo(
            out,
            data_set=data_set,
            data_path=data_path,
            quick=quick,
            seed=seed,
            vit_teacher=vit_teacher,
            num_workers=num_workers,
            lanes=lanes,
            students=students,
        )


def _demo(
    out: Path,
    *,
    data_set: str,
    data_path: str | None,
    quick: bool,
    seed: int,
    vit_teacher: bool,
    num_workers: int,
    lanes: int | None,
    students: Students,
) -> dict:
    start = time.perf_counter()
    in_memory = canonical_name(data_set) in BUILTINS  # augmented a batch at a time, without loader processes
    common = {
        "data.data_set": data_set,
        "data.data_path": data_path,
        "run.seed": seed,
        "aug.batch_aug": in_memory,
        "data.num_workers": num_workers,
        **(QUICK if quick else {}),
    }
    train_set, info = build_dataset(data_set, data_path, True)
    build_dataset(data_set, data_path, False)  # a missing or mismatched val/ said now, not by the first run
    wanted = QUICK_LABELS if quick else LABELS
    counts, smallest = label_counts(train_set.targets, wanted)
    for n in (n for n in wanted if n not in counts):
        print(f"deit demo: {n} labels per class left out: the smallest class has {smallest} training images")
    jobs = study_jobs(out, common, train_set.targets, counts, students)
    if vit_teacher:
        jobs.append(vit_teacher_job(out, common, train_set.targets, students))
    print(
        f"deit demo: {len(jobs)} runs on {canonical_name(data_set)} ({len(train_set)} training images), "
        "side by side: each teacher, its cached outputs, then its students, the longest first"
    )
    done = train_side_by_side(jobs, out, lanes=lanes)
    per_class = round(len(train_set) / info.num_classes)  # "all": the curve's x for every label kept
    results = gather_results(
        out, jobs, done, per_class, data_set=data_set, data_path=data_path, seed=seed, quick=quick, students=students
    )
    pictures(out, results, jobs, done, data_set, data_path)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(out / "report.md", report(results))
    print(f"\n{curve_table(results)}\n\n{report_table(results)}")
    if line := unreadable_line(results):
        print(line)
    print(f"report, results and pictures in {out}/")
    return results


def _prepare(out: Path) -> Path:
    """The demo writes into its own folder (locked by the caller); a previous demo's runs there are replaced,
    anything else is kept."""
    if any(child.name != LOCK for child in out.iterdir()):
        if not (out / MARKER).exists():
            raise ValueError(f"{out} is not empty and holds no earlier demo; pick another --output_dir")
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
    write_text(out / MARKER, "written by `deit demo`; its runs here are replaced when the demo runs again\n")
    return out
