"""What the teacher cache's checks cost: an ImageNet-sized epoch file written and read with and without them.

    python benchmarks/bench_cache_digest.py              # 1,281,167 views, top 10 logits in float16 (ImageNet)
    python benchmarks/bench_cache_digest.py --views 100000 --rounds 3

One process's epoch file as `deit cache-teacher` writes it for ImageNet-1k (positions, indices, view checksums, the
top-k logits and classes). Timed in rounds, the two ways taking turns: writing with safetensors alone against the
cache's `write_epoch` (which adds the sha256 digest of the tensors to the header), and reading with safetensors
alone against the cache's reader (size, names, dtypes, shapes, ranges and the digest checked; safetensors
alone maps the file and reads its bytes only when a tensor is used). Prints seconds, the
checked / plain ratios, and the checks' time against an epoch of DeiT-S's distilled step with the cache at the
H200's 5,727 img/s (docs/benchmarks.md); saves benchmarks/results/bench_cache_digest_<machine>_<date>.json.
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

H200_CACHED_STEP_IMG_S = 5727  # DeiT-S distilled, teacher cached, bf16, batch 256 (docs/benchmarks.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=1_281_167, help="views in the epoch (ImageNet-1k's train set)")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    from deit.benchmark import save_record
    from deit.distill.cache import TeacherCache, epoch_file
    from deit.distributed import machine

    n, k, classes = args.views, args.topk, 1000
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "positions": torch.randperm(n, generator=generator).to(torch.int32),
        "indices": torch.randperm(n, generator=generator).to(torch.int32),
        "checksums": torch.randn(n, generator=generator),
        "values": torch.randn(n, k, generator=generator).to(torch.float16),
        "classes": torch.randint(0, classes, (n, k), generator=generator).to(torch.int16),
    }
    meta = {
        "version": 4,
        "data": {"size": n, "num_classes": classes},
        "views": {"world_size": 1, "batch_size": 256},
        "attention": None,
        "epochs": 1,
        "topk": k,
        "dtype": "float16",
    }
    times = {"write plain": [], "write checked": [], "read plain": [], "read checked": []}
    with tempfile.TemporaryDirectory() as folder:
        cache = TeacherCache(folder, meta)
        checked, plain = Path(folder) / epoch_file(0, 0), Path(folder) / "plain.safetensors"
        for round_ in range(args.rounds):
            ways = [("plain", plain), ("checked", checked)]
            for way, path in ways if round_ % 2 == 0 else ways[::-1]:
                start = time.perf_counter()
                save_file(tensors, str(path)) if way == "plain" else cache.write_epoch(0, 0, [tensors])
                times[f"write {way}"].append(time.perf_counter() - start)
            for way, path in ways if round_ % 2 == 0 else ways[::-1]:
                start = time.perf_counter()
                load_file(str(path)) if way == "plain" else cache._read(path, 0, 0)
                times[f"read {way}"].append(time.perf_counter() - start)
        size = checked.stat().st_size
    med = {key: statistics.median(v) for key, v in times.items()}
    epoch_s = n / H200_CACHED_STEP_IMG_S
    extra = med["write checked"] - med["write plain"] + med["read checked"] - med["read plain"]
    print(f"{machine()}: an epoch file of {n:,} views, top {k}, {size / 2**20:.1f} MiB; median of {args.rounds} rounds")
    for what in ("write", "read"):
        p, c = med[f"{what} plain"], med[f"{what} checked"]
        print(f"  {what:5s} safetensors alone {p:7.3f} s   with the checks {c:7.3f} s   checked / plain {c / p:5.2f}x")
    print(
        f"  the checks add {extra:.3f} s to writing and reading it once: {100 * extra / epoch_s:.2f}% of the "
        f"{epoch_s:.0f} s an epoch of the cached distilled step takes at {H200_CACHED_STEP_IMG_S:,} img/s"
    )
    record = {
        "benchmark": "bench_cache_digest",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "torch": torch.__version__,
        "views": n,
        "topk": k,
        "file_bytes": size,
        "rounds": args.rounds,
        "seconds": times,
        "median_s": med,
        "checked_over_plain": {w: med[f"{w} checked"] / med[f"{w} plain"] for w in ("write", "read")},
        "extra_s": extra,
        "share_of_h200_cached_epoch": extra / epoch_s,
    }
    save_record(record, args.out)


if __name__ == "__main__":
    main()
