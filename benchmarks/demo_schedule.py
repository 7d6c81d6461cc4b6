"""The demo's 10-label runs alone (teacher, its cache, the DeiT alone, hard, soft + attention) with the 10-label
students at another schedule, over seeds: what fewer epochs there cost against the teacher and the DeiT alone.

    python benchmarks/demo_schedule.py --data-set fashion-mnist --epochs 48 --seeds 0 1 2

The runs are the demo's own (`study_jobs` at 10 labels per class, every setting the demo's but the students'
epochs), side by side in two lanes as the demo runs them. Prints each run's top-1 per seed, the margins of the
distilled students, and the lane-seconds of the runs; saves
benchmarks/results/demo_schedule_<data set>_<N>-epochs_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without an install
from demo_seeds import points, summary

from deit.benchmark import save_record
from deit.data.datasets import build_dataset
from deit.demo.lanes import train_side_by_side
from deit.demo.plan import Students, study_jobs
from deit.distributed import machine


def one_seed(data_set: str, seed: int, epochs: int, out: Path) -> dict:
    """The 10-label runs of seed `seed`: {method: top-1}, {run: seconds} and the wall time."""
    common = {"data.data_set": data_set, "data.data_path": None, "run.seed": seed, "aug.batch_aug": True}
    common["data.num_workers"] = 2
    targets = build_dataset(data_set, None, True)[0].targets
    jobs = study_jobs(out, common, targets, (10,), Students.of(None, epochs))
    start = time.perf_counter()
    done = train_side_by_side(jobs, out)
    wall = round(time.perf_counter() - start, 1)
    acc = {job.row.get("curve"): done[job.name]["acc1"] for job in jobs if not job.cache_only}
    return {"acc1": acc, "seconds": {name: row["train_seconds"] for name, row in done.items()}, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-set", default="mnist5k")
    parser.add_argument("--epochs", type=int, required=True, help="the 10-label students' epochs (the demo's: 72)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--note", default=None, help="a line on how the seeds ran (e.g. beside other work)")
    args = parser.parse_args()
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            seeds[seed] = one_seed(args.data_set, seed, args.epochs, Path(tmp) / f"seed{seed}")
            print(f"seed {seed}: {seeds[seed]['acc1']} in {seeds[seed]['wall']} s", flush=True)
    methods = list(next(iter(seeds.values()))["acc1"])
    curve = {m: [seeds[s]["acc1"][m] for s in args.seeds] for m in methods}
    margins = {}
    for m in ("hard", "soft + attention"):
        over_alone = [a - b for a, b in zip(curve[m], curve["none"])]
        over_teacher = [a - b for a, b in zip(curve[m], curve["teacher"])]
        margins[m] = {
            "minus_none": [points(v) for v in over_alone],
            "minus_none_mean": points(statistics.mean(over_alone)),
            "minus_teacher": [points(v) for v in over_teacher],
            "minus_teacher_mean": points(statistics.mean(over_teacher)),
        }
    for m, values in curve.items():
        print(f"{m:>18}: " + " / ".join(f"{v:.1f}" for v in values) + f"  mean {statistics.mean(values):.2f}")
    for m, row in margins.items():
        alone, teacher = row["minus_none_mean"], row["minus_teacher_mean"]
        print(f"{m}: {alone:+.2f} over the DeiT alone, {teacher:+.2f} to the teacher")
    record = {
        "benchmark": f"demo_schedule_{args.data_set}_{args.epochs}-epochs",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python benchmarks/demo_schedule.py " + " ".join(sys.argv[1:]),
        **({"note": args.note} if args.note else {}),
        "data_set": args.data_set,
        "labels_per_class": 10,
        "student_epochs": args.epochs,
        "seeds": args.seeds,
        "curve": {m: summary(v) for m, v in curve.items()},
        "margins": margins,
        "runs": {str(s): {"seconds": seeds[s]["seconds"], "wall": seeds[s]["wall"]} for s in args.seeds},
    }
    save_record(record, args.out)


if __name__ == "__main__":
    main()
