"""The spread over seeds of the short runs whose accuracy the tests bound (tests/short_runs.py).

A short run is chaotic: another CPU's rounding moves it as another seed does. Each seed here trains every run of
tests/short_runs.py with the same flags as the tests (`--seed` the only difference) and records the quantity each
test bounds; the tests' thresholds are derived from the mean and standard deviation written here.

    python benchmarks/seed_spread.py --seeds 0 1 2 3 4 5 6 7 8 9   # about 2 min a seed on 2 cores

Writes benchmarks/results/seed_spread_<machine>_<date>.json after every seed (a stopped run keeps its seeds).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import short_runs  # noqa: E402

from deit.benchmark import save_record  # noqa: E402
from deit.distributed import cpu_name  # noqa: E402


def one_seed(seed: int, folder: Path) -> dict[str, float]:
    """Every short run at `seed`: the quantities the tests bound (top-1 in %, the 8 px teacher's as fractions)."""
    torch.manual_seed(0)  # as the tests' autouse fixture
    teacher = folder / "teacher"
    t = short_runs.train_teacher(teacher, seed)[-1]["test_acc1"]
    student = short_runs.hard_distilled_student(folder / "student", teacher, seed)
    semi = short_runs.unlabelled_against_few_labels(folder / "semi", teacher, seed)
    deit3 = short_runs.deit3_distilled_then_finetuned(folder / "deit3", teacher, seed)
    recipe = short_runs.deit3_recipe(folder / "recipe", seed)
    small = short_runs.cnn_on_8px_digits(folder / "digits8", seed)
    return {
        "teacher_acc1": t,
        "distilled_student_acc1": student[-1]["test_acc1"],
        "unlabelled_acc1": semi["semi"],
        "few_labels_acc1": semi["few"],
        "unlabelled_minus_teacher": semi["semi"] - t,
        "unlabelled_minus_few_labels": semi["semi"] - semi["few"],
        "deit3_distilled_acc1": deit3["student"][-1]["test_acc1"],
        "deit3_finetuned_first_minus_fresh_first": deit3["tuned"]["test_acc1"] - deit3["student"][0]["test_acc1"],
        "deit3_recipe_acc1": recipe[-1]["test_acc1"],
        "cnn_8px_native": small["native"],
        "cnn_8px_resized_minus_native": small["resized"] - small["native"],
        "cnn_8px_raw_minus_resized": small["raw"] - small["resized"],
    }


def summary(per_seed: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = next(iter(per_seed.values())).keys()
    out = {}
    for key in keys:
        values = [r[key] for r in per_seed.values()]
        out[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    machine = f"{cpu_name()}, torch {torch.__version__}"
    record = {
        "benchmark": "seed_spread",
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "runs": "tests/short_runs.py",
        "per_seed": {},
    }
    for seed in args.seeds:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            record["per_seed"][str(seed)] = one_seed(seed, Path(folder))
        record["summary"] = summary(record["per_seed"])
        print(f"seed {seed} ({time.perf_counter() - start:.0f} s): {record['per_seed'][str(seed)]}", flush=True)
        save_record(record, args.out)
    for key, s in record["summary"].items():
        print(f"{key:42s} mean {s['mean']:7.2f}  std {s['std']:5.2f}  min {s['min']:7.2f}  max {s['max']:7.2f}")


if __name__ == "__main__":
    main()
