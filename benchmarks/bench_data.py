"""The training input pipeline from an ImageFolder against the same images as WebDataset shards, in one run.

    python benchmarks/bench_data.py                            # 2,000 JPEGs at 500x375, 2 loader workers
    python benchmarks/bench_data.py --images 20000 --num_workers 14 --batch-size 256

Writes `--images` random-content JPEGs (ImageNet's typical size, 500x375, quality 90; 10 classes) as class folders,
then `deit shard`s them (256 MB shards). Each round passes once over the training split through `deit train`'s own
loader (`data/loaders.py`: per-sample seeded views, the DeiT recipe at 224 px: RandomResizedCrop, flip,
RandAugment rand-m9-mstd0.5-inc1, colour jitter, random erasing), from the folder and from the shards, with the
same workers and batch, the two alternated round by round; `--batch-aug` measures the loader part of batch
augmentation instead (decode, crop and flip in the workers). Both read files the first round left in the page
cache. Prints images/s (median over rounds) and shards / folder per round, and saves
benchmarks/results/bench_data_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))  # runs from a checkout without an install


def write_folder(root: Path, count: int) -> None:
    from deit.benchmark import jpeg_dataset

    jpegs = jpeg_dataset(count, 3)
    for i, blob in enumerate(jpegs.blobs):
        folder = root / "train" / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(blob)


def loader_of(data_set: str, path: Path, *, batch_size: int, num_workers: int, batch_aug: bool, shuffle_buffer: int):
    """`deit train`'s training loader and sampler for the data at `path`."""
    from deit.data import build_dataset
    from deit.data.loaders import loader_options, train_loader, training_order, training_views
    from deit.data.transforms import Recipe

    dataset, info = build_dataset(data_set, str(path), True)
    recipe = Recipe()  # the DeiT recipe's per-image part (timm's defaults as the paper's Table 9 sets them)
    training_views(dataset, recipe, img_size=224, mean=info.mean, std=info.std, batch_aug=batch_aug)
    sampler = training_order(dataset, seed=0, rank=0, world_size=1, repeated_aug=False, shuffle_buffer=shuffle_buffer)
    options = loader_options(num_workers, pin_memory=False)
    return train_loader(dataset, sampler, batch_size=batch_size, batch_aug=batch_aug, options=options), sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-aug", action="store_true", help="the workers' part of batch augmentation only")
    parser.add_argument("--shard-size", default="256MB")
    parser.add_argument("--shuffle-buffer", type=int, default=2000, help="of the shards' stream, per worker")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch

    from deit.benchmark import save_record
    from deit.data.datasets import shard_sources
    from deit.data.shards.writer import parse_size, write_split
    from deit.distributed import machine

    torch.set_num_threads(1)  # the loader workers do the work; the main process only collects batches
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_folder(root / "folder", args.images)
        for split, items, names in shard_sources(str(root / "folder"), "train"):
            write_split(items, names, root / "shards", split, shard_size=parse_size(args.shard_size))
        size_mb = sum(f.stat().st_size for f in (root / "shards").glob("*.tar")) / 1e6
        options = dict(
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            batch_aug=args.batch_aug,
            shuffle_buffer=args.shuffle_buffer,
        )
        loaders = {
            "folder": loader_of("folder", root / "folder", **options),
            "shards": loader_of("wds", root / "shards", **options),
        }
        times: dict[str, list[float]] = {k: [] for k in loaders}
        images = {}
        for round_ in range(args.rounds + 1):  # round 0 starts the workers and fills the page cache
            for key in list(loaders) if round_ % 2 == 0 else list(loaders)[::-1]:
                loader, sampler = loaders[key]
                sampler.set_epoch(round_)
                start = time.perf_counter()
                images[key] = sum(len(batch.targets) for batch in loader)
                if round_:
                    times[key].append(time.perf_counter() - start)
        del loaders
    rates = {k: images[k] / statistics.median(v) for k, v in times.items()}
    ratios = [f / s for f, s in zip(times["folder"], times["shards"])]
    part = "decode + crop + flip (batch augmentation's loader part)" if args.batch_aug else "the whole DeiT recipe"
    print(
        f"{args.images} JPEGs 500x375 ({size_mb:.0f} MB of shards), {part}, batch {args.batch_size}, "
        f"{args.num_workers} workers, {args.rounds} rounds:"
    )
    for key, rate in rates.items():
        print(f"  {key:>7}: {rate:8.1f} img/s ({images[key]} images a pass)")
    print(
        f"  shards / folder: {statistics.median(ratios):.2f}x (median of rounds; {min(ratios):.2f}-{max(ratios):.2f})"
    )
    record = {
        "benchmark": "bench_data"
        + ("_batch_aug" if args.batch_aug else "")
        + (f"_shards{args.shard_size}" if args.shard_size != "256MB" else ""),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "images": args.images,
        "jpeg_size": [500, 375],
        "shards_mb": round(size_mb, 1),
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "shuffle_buffer": args.shuffle_buffer,
        "pipeline": part,
        "img_s": rates,
        "times_s": times,
        "shards_vs_folder": statistics.median(ratios),
        "shards_vs_folder_per_round": ratios,
    }
    save_record(record, args.out)


if __name__ == "__main__":
    main()
