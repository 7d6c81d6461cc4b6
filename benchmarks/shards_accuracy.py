"""Accuracy from an ImageFolder against the same images as WebDataset shards, over seeds.

    python benchmarks/shards_accuracy.py            # seeds 0-7, about 8 minutes on 2 cores

mnist5k's 4,000 training and 1,000 test digits written as class folders of PNG files and sharded (200 KB shards);
the same CNN (small_cnn, 28 px), recipe and seed trained 2 epochs from each (tests/test_train_shards.py's
settings, 2 loader workers). Prints the test top-1 of every run, the means and standard deviations, and saves
benchmarks/results/shards_accuracy_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without an install
sys.path.insert(0, str(ROOT / "tests"))  # the test's settings and folder writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    from conftest import read_log
    from test_train_shards import config, write_digits

    from deit.benchmark import save_record
    from deit.cli import main as deit
    from deit.distributed import machine
    from deit.train import run

    settings = {"model.model": "small_cnn", "model.input_size": 28, "optim.lr": 0.02, "run.epochs": 2}
    settings["data.num_workers"] = 2
    acc: dict[str, list[float]] = {"folder": [], "wds": []}
    with tempfile.TemporaryDirectory() as scratch:
        root = write_digits(Path(scratch) / "folder")
        shards = Path(scratch) / "shards"
        assert deit(["shard", str(root), str(shards), "--shard-size", "200KB"]) == 0
        for seed in args.seeds:
            for name, path in (("folder", root), ("wds", shards)):
                out = Path(scratch) / f"{name}{seed}"
                run(
                    config(
                        **settings,
                        **{
                            "run.seed": seed,
                            "data.data_set": name,
                            "data.data_path": str(path),
                            "run.output_dir": str(out),
                        },
                    )
                )
                acc[name].append(read_log(out)[-1]["test_acc1"])
                print(f"seed {seed} {name}: top-1 {acc[name][-1]:.1f}%", flush=True)
    stats = {k: {"mean": statistics.mean(v), "std": statistics.stdev(v)} for k, v in acc.items()}
    diff = stats["folder"]["mean"] - stats["wds"]["mean"]
    se = (stats["folder"]["std"] ** 2 / len(args.seeds) + stats["wds"]["std"] ** 2 / len(args.seeds)) ** 0.5
    for k, v in stats.items():
        print(f"{k:>7}: {v['mean']:.2f} +- {v['std']:.2f} (mean, std over {len(args.seeds)} seeds)")
    print(f"folder - shards: {diff:.2f} points, {diff / se:.2f} standard errors")
    save_record(
        {
            "benchmark": "shards_accuracy",
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "settings": settings,
            "seeds": args.seeds,
            "test_acc1": acc,
            "stats": stats,
            "folder_minus_shards": diff,
            "standard_error": se,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
