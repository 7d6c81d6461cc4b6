"""Markdown tables from `demo_seeds.py` records: each point of the study per seed with mean and spread, then the
best distilled student at each count of labels against the DeiT alone and against its teacher.

    python benchmarks/seeds_table.py benchmarks/results/demo_seeds_mnist5k_*.json [more records]

A margin counts as shown when its mean is larger than the larger seed spread of the two rows it compares.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without an install
from deit.demo.report import curve_label

EARLIER = {"hard + attention": "DeiT, hard + attention, + unlabelled"}
"""Rows of records made before 2026-12-07, whose third student was hard + attention."""


def row_name(method: str) -> str:
    return EARLIER.get(method) or curve_label(method)


def curve_table(record: dict) -> str:
    seeds = record["seeds"]
    lines = [
        "| labels per class | method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread |",
        "|---|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for p in record["curve"]:
        values = " | ".join(f"{v:.1f}" for v in p["acc1"])
        name = row_name(p["method"])
        lines.append(f"| {p['labels_per_class']} | {name} | {values} | {p['mean']:.1f} | {p['spread']:.1f} |")
    return "\n".join(lines)


def margins(record: dict) -> list[dict]:
    """Per count of labels: the distilled student with the best mean, and its margins as demo_seeds.py recorded
    them (means over the seeds), with the larger spread of the rows each margin compares."""
    at = {(p["labels_per_class"], p["method"]): p for p in record["curve"]}
    rows = []
    for n in sorted({p["labels_per_class"] for p in record["curve"]}):
        distilled = [m for k, m in at if k == n and m not in ("teacher", "none")]
        best = max(distilled, key=lambda m: at[n, m]["mean"])
        margin = record["margins"][f"{n} {best}"]
        rows.append(
            {
                "labels_per_class": n,
                "best": best,
                "student": at[n, best]["mean"],
                "over_alone": margin["minus_none_mean"],
                "alone_spread": margin["largest_spread"],
                "to_teacher": margin["minus_teacher_mean"],
                "teacher_spread": max(at[n, best]["spread"], at[n, "teacher"]["spread"]),
            }
        )
    return rows


def margin_table(record: dict) -> str:
    lines = [
        "| labels per class | best distilled | its top-1 | minus DeiT alone (larger spread) "
        "| minus teacher (larger spread) |",
        "|---|---|---|---|---|",
    ]
    for r in margins(record):
        lines.append(
            f"| {r['labels_per_class']} | {r['best']} | {r['student']:.1f} | {r['over_alone']:+.1f} "
            f"({r['alone_spread']:.1f}) | {r['to_teacher']:+.1f} ({r['teacher_spread']:.1f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.records:
        record = json.loads(path.read_text())
        if "curve" not in record:  # the records before 2026-12-01 kept only the hard student's margins
            print(f"{path}: no per-seed curve in this record (an older demo_seeds format), passed over\n")
            continue
        seconds = ", ".join(f"seed {s}: {t:.0f} s" for s, t in record["seconds"].items())
        print(f"## {record['data_set']} ({record['machine']}, {record['date']}; {seconds})\n")
        print(curve_table(record) + "\n")
        print(margin_table(record) + "\n")


if __name__ == "__main__":
    main()
