"""The demo's table over several seeds: is hard distillation's margin over no teacher larger than the seed spread?

    python benchmarks/demo_seeds.py                 # seeds 0 1 2, the full demo each time (about 30 min on 2 cores)
    python benchmarks/demo_seeds.py --seeds 0 1 2 3

Each seed runs `deit demo` (teacher and all students) into a folder of its own. Prints every method's top-1 per
seed, mean and spread (max - min), and the hard - none margin per seed; saves
benchmarks/results/demo_seeds_<machine>_<date>.json.
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
from deit.benchmark import save_record  # noqa: E402
from deit.demo import machine, run_demo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--keep", default=None, help="a folder to keep each seed's demo output in (seed0/, ...)")
    args = parser.parse_args()

    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            start = time.perf_counter()
            runs[seed] = run_demo(output_dir=Path(args.keep or scratch) / f"seed{seed}", seed=seed, num_workers=2)
            seconds[seed] = round(time.perf_counter() - start, 1)
    methods = ["teacher"] + [s["method"] for s in runs[args.seeds[0]]["students"]]
    table = {}
    for method in methods:
        values = [r["teacher"]["acc1"] if method == "teacher" else
                  next(s["acc1"] for s in r["students"] if s["method"] == method) for r in runs.values()]  # fmt: skip
        table[method] = {"acc1": values, "mean": statistics.mean(values), "spread": max(values) - min(values)}
        print(f"{method:32s} " + " ".join(f"{v:5.1f}" for v in values)
              + f"   mean {table[method]['mean']:5.2f}  spread {table[method]['spread']:4.1f}")  # fmt: skip
    none = table["none"]["acc1"]
    hard = table["hard, distillation token"]["acc1"]
    margins = [h - n for h, n in zip(hard, none)]
    spread = max(table["none"]["spread"], table["hard, distillation token"]["spread"])
    print(f"hard - none per seed: {', '.join(f'{m:+.1f}' for m in margins)}; largest spread of the two: {spread:.1f}")
    record = {
        "benchmark": "demo_seeds", "date": datetime.date.today().isoformat(), "machine": machine(),
        "seeds": args.seeds, "methods": table, "hard_minus_none": margins, "largest_spread": spread,
        "seconds": seconds,  # the whole demo, per seed
    }  # fmt: skip
    save_record(record, args.out)


if __name__ == "__main__":
    main()
