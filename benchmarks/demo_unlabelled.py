"""The demo's comparison with few labels: does a teacher make the unlabelled images worth training on?

    python benchmarks/demo_unlabelled.py                        # 100 labels per class, seed 0 (about 7 min on 2 cores)
    python benchmarks/demo_unlabelled.py --labels-per-class 30 --seed 1

mnist5k's 4,000 training digits, of which only N per class keep their labels. The teacher (the demo's CNN) trains on
the labelled ones. The undistilled student trains on the labelled ones; the distilled students on every image
(`--unlabelled`): the class head learns from the labels, the distillation losses from the teacher's answers. Every
student takes the same number of optimizer steps (the demo's 40 epochs over 4,000 images, at batch 32), and the
teacher as many as in the demo. Prints each row's top-1 and time; saves
benchmarks/results/demo_unlabelled_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without an install
from deit.benchmark import save_record  # noqa: E402
from deit.checkpoint import read_log  # noqa: E402
from deit.config import TrainConfig, merge  # noqa: E402
from deit.data import build_dataset  # noqa: E402
from deit.demo import (DISTILLED_STUDENT, METHODS, STUDENTS, TEACHER, _slug, machine,  # noqa: E402
                       train_side_by_side)  # fmt: skip
from deit.train import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--keep", default=None, help="a folder to keep the runs in")
    args = parser.parse_args()

    every = len(build_dataset("mnist5k", None, True)[0])
    labelled = len(build_dataset("mnist5k", None, True, labels_per_class=args.labels_per_class)[0])
    ratio = every / labelled  # epochs over the labelled images that take as many steps as one over all of them
    common = {"data.data_set": "mnist5k", "run.seed": args.seed, "aug.batch_aug": True, "data.num_workers": 0,
              "data.labels_per_class": args.labels_per_class}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.keep or scratch)

        def config(name: str, settings: dict) -> TrainConfig:
            values, explicit = merge({}, {**settings, **common, "run.output_dir": str(out / name)})
            return TrainConfig.from_dict(values, explicit)

        start = time.perf_counter()
        run(config("teacher", {**TEACHER, "run.epochs": round(TEACHER["run.epochs"] * ratio),
                               "optim.warmup_epochs": TEACHER["optim.warmup_epochs"] * ratio}))  # fmt: skip
        teacher_seconds = round(time.perf_counter() - start, 1)
        semi = {"data.unlabelled": True, "distill.teacher_path": str(out / "teacher"),
                "distill.teacher_cache": str(out / "teacher_cache")}  # fmt: skip
        run(config("teacher_cache", {**STUDENTS, **semi, "model.model": DISTILLED_STUDENT, **METHODS[-1][2]}),
            cache_only=True)  # fmt: skip
        jobs = []
        for label, model, settings in METHODS:
            if settings:  # distilled: every image, the labelled ones with their labels
                extra = semi
            else:  # no teacher: the labelled images alone, for as many steps
                extra = {"run.epochs": round(STUDENTS["run.epochs"] * ratio),
                         "optim.warmup_epochs": STUDENTS["optim.warmup_epochs"] * ratio}  # fmt: skip
            jobs.append((_slug(label), {"method": label},
                         config(_slug(label), {**STUDENTS, "model.model": model, **settings, **extra})))  # fmt: skip
        rows = train_side_by_side(jobs, out)
        teacher = read_log(out / "teacher" / "log.jsonl")[-1]["test_acc1"]
    print(f"{labelled} of {every} training digits labelled; seed {args.seed}")
    print(f"{'teacher (labelled only)':32s} {teacher:5.1f}  {teacher_seconds:6.1f} s")
    for row in rows:
        print(f"{row['method']:32s} {row['acc1']:5.1f}  {row['train_seconds']:6.1f} s")
    record = {
        "benchmark": "demo_unlabelled", "date": datetime.date.today().isoformat(), "machine": machine(),
        "seed": args.seed, "labelled": labelled, "images": every,
        "teacher": {"acc1": teacher, "seconds": teacher_seconds},
        "students": [{"method": r["method"], "images": labelled if r["method"] == "none" else every,
                      "epochs": len(r["log"]), "acc1": r["acc1"], "seconds": r["train_seconds"],
                      "acc1_by_epoch": [e["test_acc1"] for e in r["log"]]} for r in rows],
    }  # fmt: skip
    save_record(record, args.out)


if __name__ == "__main__":
    main()
