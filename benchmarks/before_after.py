"""`deit benchmark` on two versions of the code, run alternately on one machine: each measurement's ratio (ours /
its baseline, both measured in the same run) per run, for each version.

A change that should leave speed alone (a restructuring) or that should change it shows here run by run, against
the noise of the machine: the versions alternate (before, after, before, after, ...), so slow spells hit both.

    git worktree add /tmp/before <commit>
    python benchmarks/before_after.py --before /tmp/before/src --runs 1 --label restructure -- \
        --preset cpu --rounds 5 --steps 10

Writes benchmarks/results/deit_benchmark_<preset>_before_after_<label>_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from deit.benchmark import save_record  # noqa: E402
from deit.distributed import cpu_name  # noqa: E402


def one_run(src: Path, args: list[str]) -> dict:
    """`deit benchmark ARGS` with the code in `src`; its JSON record."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(src)}
        subprocess.run([sys.executable, "-m", "deit", "benchmark", *args, "--out", out], env=env, check=True)
        (record,) = [json.loads(p.read_text()) for p in Path(out).glob("*.json")]
    return record


def ratios(record: dict) -> dict[str, float]:
    out = {}
    for r in record["results"]:
        out[f"{r['measurement']} ({r['ours']} / {r['baseline']})"] = r["ratio"]
        if "cached_ratio" in r:
            out[f"{r['measurement']}: teacher cached (ours + cache / {r['baseline']})"] = r["cached_ratio"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, type=Path, help="the src/ folder of the code before")
    parser.add_argument("--after", type=Path, default=ROOT / "src", help="the src/ folder of the code after")
    parser.add_argument("--runs", type=int, default=1, help="runs of each version, alternated")
    parser.add_argument("--label", default="", help="a word for the file name")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then deit benchmark's arguments")
    a = parser.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(a.runs):
        for version, src in (("before", a.before), ("after", a.after)):
            runs[version].append(one_run(src.resolve(), args))
    table = {version: [ratios(r) for r in records] for version, records in runs.items()}
    print(f"\n{'measurement':<80} {'before':>18} {'after':>18}")
    for key in table["after"][0]:
        before = ", ".join(f"{t[key]:.2f}" for t in table["before"] if key in t)
        after = ", ".join(f"{t[key]:.2f}" for t in table["after"])
        print(f"{key:<80} {before:>18} {after:>18}")
    preset = runs["after"][0]["preset"]
    label = f"_{a.label}" if a.label else ""
    save_record(
        {
            "benchmark": f"deit_benchmark_{preset}_before_after{label}",
            "date": datetime.date.today().isoformat(),
            "machine": f"{cpu_name()}",
            "command": f"deit benchmark {' '.join(args)}, {a.runs} run(s) of each version, alternated",
            "before": str(a.before),
            "after": str(a.after),
            "ratios": table,
            "runs": runs,
        },
        ROOT / "benchmarks" / "results",
    )


if __name__ == "__main__":
    main()
