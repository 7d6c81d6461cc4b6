"""What the benchmark scripts share: a file-name form of the machine, and writing a record to results/."""

from __future__ import annotations

import json
import re
from pathlib import Path


def slug(text: str) -> str:
    """"AMD EPYC, 2 cores" -> "amd-epyc-2-cores"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def save_record(record: dict, out_dir: str | Path) -> Path:
    """Write `record` as results/<benchmark>_<machine>_<date>.json and say where."""
    out = Path(out_dir) / f"{record['benchmark']}_{slug(record['machine'])}_{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out}")
    return out
