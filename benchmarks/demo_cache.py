"""The demo's distilled students with the teacher online against the same students reading a shared teacher cache.

    python benchmarks/demo_cache.py                 # the demo's settings (about 20 min on 2 cores)
    python benchmarks/demo_cache.py --epochs 4      # shorter

Trains the demo's teacher, then for each distilled method of `deit demo` trains the student twice, one after the
other: with the teacher running at every step, and from a cache the teacher filled once for all of them. Prints
wall times and ratios (students only, and with the cache's making included) and checks both ways reach the same
accuracy; saves benchmarks/results/demo_cache_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without an install
from deit.benchmark import save_record  # noqa: E402
from deit.config import TrainConfig, merge  # noqa: E402
from deit.demo import DISTILLED_STUDENT, METHODS, STUDENTS, TEACHER, machine  # noqa: E402
from deit.train import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=STUDENTS["run.epochs"], help="per student")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        # as the demo runs them (batch augmentation on its in-memory digits), one after the other
        common = {"data.data_set": "mnist5k", "run.seed": 0, "data.num_workers": args.num_workers, "aug.batch_aug": True}

        def timed(name: str, settings: dict, cache_only: bool = False) -> tuple[float, dict]:
            values, explicit = merge({}, {**settings, **common, "run.output_dir": str(root / name)})
            start = time.perf_counter()
            summary = run(TrainConfig.from_dict(values, explicit), cache_only=cache_only)
            return time.perf_counter() - start, summary

        timed("teacher", TEACHER)
        students = {**STUDENTS, "run.epochs": args.epochs, "model.model": DISTILLED_STUDENT,
                    "distill.teacher_path": str(root / "teacher")}  # fmt: skip
        cache = {"distill.teacher_cache": str(root / "cache")}
        cache_seconds, _ = timed("cache", {**students, **METHODS[-1][2], **cache}, cache_only=True)
        rows = []
        for label, _, settings in METHODS[1:]:  # the distilled ones: "none" has no teacher to cache
            online, a = timed(f"online_{len(rows)}", {**students, **settings})
            cached, b = timed(f"cached_{len(rows)}", {**students, **settings, **cache})
            rows.append({"method": label, "online_s": round(online, 1), "cached_s": round(cached, 1),
                         "ratio": round(cached / online, 3), "online_acc1": a["test_acc1"],
                         "cached_acc1": b["test_acc1"]})  # fmt: skip
            print(json.dumps(rows[-1]))
    online = sum(r["online_s"] for r in rows)
    cached = sum(r["cached_s"] for r in rows)
    print(f"\n{'method':32s} {'online':>8s} {'cached':>8s} {'ratio':>6s}   top-1 online / cached")
    for r in rows:
        print(f"{r['method']:32s} {r['online_s']:7.1f}s {r['cached_s']:7.1f}s {r['ratio']:6.2f}   "
              f"{r['online_acc1']:.1f}% / {r['cached_acc1']:.1f}%")  # fmt: skip
    print(f"{'all distilled students':32s} {online:7.1f}s {cached:7.1f}s {cached / online:6.2f}")
    print(f"the cache itself: {cache_seconds:.1f}s; students + cache against online: "
          f"{(cached + cache_seconds) / online:.2f}")  # fmt: skip
    record = {
        "benchmark": "demo_cache", "date": datetime.date.today().isoformat(), "machine": machine(),
        "epochs": args.epochs, "num_workers": args.num_workers, "students": rows,
        "online_seconds": round(online, 1), "cached_seconds": round(cached, 1),
        "cache_seconds": round(cache_seconds, 1), "ratio": round(cached / online, 3),
        "ratio_with_cache": round((cached + cache_seconds) / online, 3),
    }  # fmt: skip
    save_record(record, args.out)


if __name__ == "__main__":
    main()
