"""The demo's distilled students (every label kept) with the teacher online against the same students reading a
shared teacher cache.

    python benchmarks/demo_cache.py                 # the demo's settings (about 20 min on 2 cores)
    python benchmarks/demo_cache.py --epochs 4      # shorter

Trains the demo's teacher and fills the demo's teacher cache, then trains the demo's three distilled students the
way `deit demo` trains them (side by side, one process per core, one compute thread each) twice, one phase after
the other: with the teacher running at every step, and reading the cache. Prints each phase's wall time, each
student's time, the ratios (students only, and with the cache's making included) and both ways' accuracy; saves
benchmarks/results/demo_cache_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without an install
from deit.benchmark import save_record
from deit.config import TrainConfig, merge
from deit.demo.lanes import train_side_by_side
from deit.demo.plan import DISTILLED_STUDENT, METHODS, STUDENTS, TEACHER, Job, run_name
from deit.distributed import machine
from deit.train import make_teacher_cache, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=STUDENTS["run.epochs"], help="per student")
    parser.add_argument("--lanes", type=int, default=None, help="students at once (default: as the demo)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        common = {"data.data_set": "mnist5k", "run.seed": 0, "data.num_workers": 2, "aug.batch_aug": True}

        def config(folder: Path, settings: dict) -> TrainConfig:
            values, explicit = merge({}, {**settings, **common, "run.output_dir": str(folder)})
            return TrainConfig.from_dict(values, explicit)

        run(config(root / "teacher", TEACHER))
        students = {
            **STUDENTS,
            "run.epochs": args.epochs,
            "model.model": DISTILLED_STUDENT,
            "distill.teacher_path": str(root / "teacher"),
        }
        cache = {"distill.teacher_cache": str(root / "cache")}
        start = time.perf_counter()  # the demo's cache: everything any of its students needs (logits and maps)
        make_teacher_cache(config(root / "cache_run", {**students, **METHODS[-1][2], **cache}))
        cache_seconds = time.perf_counter() - start
        walls, rows = {}, {}
        for phase, extra in [("online", {}), ("cached", cache)]:
            # the distilled students ("none" has no teacher to run or read)
            jobs = [
                Job(
                    run_name(label),
                    config(root / phase / run_name(label), {**students, **how, **extra}),
                    {"method": label},
                )
                for label, _, how in METHODS[1:]
            ]
            start = time.perf_counter()
            rows[phase] = list(train_side_by_side(jobs, root / phase, lanes=args.lanes).values())
            walls[phase] = time.perf_counter() - start
    students = [
        {
            "method": a["method"],
            "online_s": a["train_seconds"],
            "cached_s": b["train_seconds"],
            "ratio": round(b["train_seconds"] / a["train_seconds"], 3),
            "online_acc1": a["acc1"],
            "cached_acc1": b["acc1"],
        }
        for a, b in zip(rows["online"], rows["cached"])
    ]
    print(f"\n{'method':32s} {'online':>8s} {'cached':>8s} {'ratio':>6s}   top-1 online / cached")
    for r in students:
        print(
            f"{r['method']:32s} {r['online_s']:7.1f}s {r['cached_s']:7.1f}s {r['ratio']:6.2f}   "
            f"{r['online_acc1']:.1f}% / {r['cached_acc1']:.1f}%"
        )
    ratio = walls["cached"] / walls["online"]
    with_cache = (walls["cached"] + cache_seconds) / walls["online"]
    print(f"{'the three, side by side (wall)':32s} {walls['online']:7.1f}s {walls['cached']:7.1f}s {ratio:6.2f}")
    print(f"the cache itself: {cache_seconds:.1f}s; students + cache against online: {with_cache:.2f}")
    record = {
        "benchmark": "demo_cache",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "epochs": args.epochs,
        "lanes": args.lanes or "as the demo",
        "students": students,
        "online_seconds": round(walls["online"], 1),
        "cached_seconds": round(walls["cached"], 1),
        "cache_seconds": round(cache_seconds, 1),
        "ratio": round(ratio, 3),
        "ratio_with_cache": round(with_cache, 3),
    }
    save_record(record, args.out)


if __name__ == "__main__":
    main()
