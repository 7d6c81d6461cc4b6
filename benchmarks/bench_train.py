"""`deit train` as a user runs it, timed per epoch: a distilled DeiT on a generated ImageFolder of JPEGs, its
teacher a timm RegNetY given as a plain state dict (the paper's setting: DeiT-S from RegNetY-16GF).

    python benchmarks/bench_train.py                        # GPU: 10 classes x 256 JPEGs 500x375, batch 256
    python benchmarks/bench_train.py --small --device cpu   # a rehearsal in about a minute

Three runs of `python -m deit train`, each under its own time limit and each saved to the record as it ends:
1. the teacher online, views made per image in the loader processes (deit train's defaults);
2. the teacher cache (made first, timed apart), `--batch-aug`, `--compile` and `--input-path device` (the loader
   processes read the files' bytes; the device decodes the JPEGs and crops them, a batch at a time);
3. the same with `--input-path loader` (the loader processes decode, crop and flip each image), its own cache.
Both use the DeiT recipe's defaults at the model's input size and `--num_workers` loader processes. The record
(benchmarks/results/bench_train_<machine>_<date>.json) holds each epoch's images/s from the run's log.jsonl and the
command's wall time. The teacher has random weights: speed is the point, not accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))  # runs from a checkout without an install

FULL = {"model": "deit_small_distilled_patch16_224", "teacher": "regnety_160", "per_class": 256, "val_per_class": 16,
        "jpeg_size": (500, 375), "batch_size": 256, "epochs": 2}  # fmt: skip
SMALL = {"model": "deit_pico_distilled_patch4_28", "teacher": "regnety_002", "per_class": 8, "val_per_class": 2,
         "jpeg_size": (40, 30), "batch_size": 16, "epochs": 2}  # fmt: skip
CLASSES = 10


def write_folder(root: Path, per_class: int, val_per_class: int, size: tuple[int, int]) -> int:
    """train/ and val/ class folders of random-content JPEGs; returns the training images' count."""
    from deit.benchmark import jpeg_dataset

    blobs = jpeg_dataset(CLASSES * (per_class + val_per_class), 3, size).blobs
    for i, blob in enumerate(blobs):
        split = "train" if i < CLASSES * per_class else "val"
        folder = root / split / f"class_{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(blob)
    return CLASSES * per_class


def write_teacher(path: Path, name: str) -> None:
    """A timm state dict of `name` with random weights and this data's classes (as a user's own teacher file)."""
    import timm
    import torch

    torch.save(timm.create_model(name, num_classes=CLASSES).state_dict(), path)


def train(argv: list[str], out: Path, timeout: float, env: dict) -> dict:
    """One `deit train` command: exit code, wall time, and each epoch's images/s from its log."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "deit", "train", *argv, "--output_dir", str(out)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
        code, tail = done.returncode, (done.stdout + done.stderr)[-2000:]
    except subprocess.TimeoutExpired as stopped:
        code, tail = "timeout", str(stopped.stdout or "")[-2000:]
    wall = time.perf_counter() - start
    log = out / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {
        "exit": code,
        "wall_s": round(wall, 1),
        "epochs": [
            {"epoch": x["epoch"], "images_per_s": x["images_per_s"], "train_seconds": x.get("train_seconds")}
            for x in lines
        ],
        **({"output_tail": tail} if code != 0 else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny sizes: a rehearsal of the script")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num_workers", type=int, default=max((os.cpu_count() or 2) - 2, 1))
    parser.add_argument("--timeout", type=float, default=150, help="seconds per deit train command")
    parser.add_argument("--no-compile", action="store_true", help="the second run without --compile")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch

    from deit.benchmark import save_record
    from deit.distributed import machine

    cfg = SMALL if args.small else FULL
    name = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else machine()
    record = {
        "benchmark": "bench_train" + ("_small" if args.small else ""),
        "date": datetime.date.today().isoformat(),
        "machine": name,
        "torch": torch.__version__,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "num_workers": args.num_workers,
        "runs": {},
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        start = time.perf_counter()
        record["train_images"] = write_folder(work / "data", cfg["per_class"], cfg["val_per_class"], cfg["jpeg_size"])
        write_teacher(work / "teacher.pth", cfg["teacher"])
        record["setup_s"] = round(time.perf_counter() - start, 1)
        common = [
            "--model", cfg["model"], "--data-set", "folder", "--data-path", str(work / "data"),
            "--epochs", str(cfg["epochs"]), "--batch-size", str(cfg["batch_size"]),
            "--num_workers", str(args.num_workers), "--device", args.device,
            "--distillation-type", "hard", "--teacher-model", cfg["teacher"],
            "--teacher-path", str(work / "teacher.pth"),
        ]  # fmt: skip
        compiled = "" if args.no_compile else ", compile"
        runs = {"teacher online, views per image": common}
        for path in ("device", "loader"):  # a cache serves the input path that made it
            runs[f"teacher cache, batch aug{compiled}, input path {path}"] = [
                *common,
                "--teacher-cache",
                str(work / f"cache_{path}"),
                "--batch-aug",
                "--input-path",
                path,
                *([] if args.no_compile else ["--compile"]),
            ]
        for i, (label, argv) in enumerate(runs.items()):
            if "--teacher-cache" in argv:  # the cache made first, timed on its own
                made = time.perf_counter()
                cached = subprocess.run(
                    [sys.executable, "-m", "deit", "cache-teacher", *argv], capture_output=True, text=True,
                    timeout=args.timeout, env=env,
                )  # fmt: skip
                record.setdefault("cache_teacher", {})[label] = {
                    "exit": cached.returncode,
                    "wall_s": round(time.perf_counter() - made, 1),
                }
            result = train(argv, work / f"run{i}", args.timeout, env)
            record["runs"][label] = result
            rates = ", ".join(f"epoch {e['epoch']} {e['images_per_s']:,.0f} img/s" for e in result["epochs"])
            print(f"{label}: exit {result['exit']}, {result['wall_s']:.0f} s; {rates}", flush=True)
            if result["exit"] != 0:
                print(result["output_tail"], file=sys.stderr)
            save_record(record, args.out)
    if any(r["exit"] != 0 for r in record["runs"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
