"""Where a training view's time goes, per sample: ours step by step against timm's transform, in one run.

    python benchmarks/bench_views.py                 # the CPU preset's digits-sized JPEGs and ImageNet-sized ones
    python benchmarks/bench_views.py --rounds 15

For two kinds of image (40x40 grayscale JPEGs cropped to 28 px, `deit benchmark --preset cpu`'s; 500x375 colour
JPEGs cropped to 224 px, ImageNet's typical size), and for the loader's part alone 2400x1800 photos too, the CPU
time of the loader's part of a view from the file's bytes (whole decode, draft mode, the device path's), of each
step of the DeiT recipe on one sample
(decode, crop, flip, RandAugment rand-m9-mstd0.5-inc1, to tensor and normalise, random erasing), of the part
`--batch-aug` leaves to the loader processes (decode, crop, flip, to a uint8 tensor), of the replay
seed (`sample_seed` and seeding the generators; the SeedSequence draw it replaced, for reference), and per batch
of 32 the collation and hand-over from two loader processes to the training process. Ours: `deit train`'s
per-image views (`data/transforms.py`); timm's: `timm.data.create_transform`, as the official loop builds it.
Steps are timed on one thread in rounds, ours and timm's taking turns, median of rounds; prints microseconds and
timm / ours, and saves benchmarks/results/bench_views_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import io
import statistics
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))  # runs from a checkout without an install

KINDS = {"28 px gray (cpu preset)": (1, (40, 40), 28), "224 px colour (ImageNet)": (3, (500, 375), 224)}
LARGE = {"224 px colour, 2400x1800 photos": (3, (2400, 1800), 224)}  # the loader parts only: draft mode's case


ROLES = {  # a step's class -> its part of the recipe (timm's to-tensor and normalise are two steps, ours one)
    "RandomResizedCropAndInterpolation": "crop",
    "ResizedCrop": "crop",
    "RandomHorizontalFlip": "flip",
    "HorizontalFlip": "flip",
    "RandAugment": "RandAugment",
    "FastRandAugment": "RandAugment",
    "MaybeToTensor": "to tensor + normalise",
    "Normalize": "to tensor + normalise",
    "ToNormalizedTensor": "to tensor + normalise",
    "RandomErasing": "random erasing",
    "ToUint8Tensor": "to uint8 tensor",
}


def step_times(blobs: list[bytes], mode: str, transforms: dict, rounds: int) -> dict[str, dict[str, list[float]]]:
    """For each transform, per part of the recipe (and the decode before it), CPU microseconds per sample in each
    round; the transforms take turns round by round, in alternating order."""
    from PIL import Image

    roles = {k: [ROLES.get(type(s).__name__, type(s).__name__) for s in t.transforms] for k, t in transforms.items()}
    times = {k: {name: [] for name in ["decode", *dict.fromkeys(r)]} for k, r in roles.items()}
    for round_ in range(rounds):
        for key in list(transforms) if round_ % 2 == 0 else list(transforms)[::-1]:
            spent = dict.fromkeys(times[key], 0.0)
            for blob in blobs:
                start = time.process_time()
                x = Image.open(io.BytesIO(blob)).convert(mode)
                spent["decode"] += time.process_time() - start
                for role, step in zip(roles[key], transforms[key].transforms):
                    start = time.process_time()
                    x = step(x)
                    spent[role] += time.process_time() - start
            for name, value in spent.items():
                times[key][name].append(value / len(blobs) * 1e6)
    return times


def loader_part_times(blobs: list[bytes], mode: str, size: int, rounds: int) -> dict[str, list[float]]:
    """CPU microseconds per sample of what a loader process does for one view, from the file's bytes: the
    --batch-aug loader path (decode, crop, flip, to a uint8 tensor) with every JPEG decoded whole and with draft
    mode (`images.read_lazy`: decoded at a lower scale where the crop box is at least twice the output size), and
    the device input path (read the header, draw the box and mirroring: `device_views.read_encoded`)."""
    import io

    from deit.data.device_views import DrawView, read_encoded
    from deit.data.images import read_image, read_lazy
    from deit.data.sampling import seeded
    from deit.data.transforms import Recipe, crop_transform

    crop = crop_transform(size, Recipe())
    draw = DrawView(*crop.transforms[:2])

    ways = {
        "loader path, whole decode": lambda blob: crop(read_image(io.BytesIO(blob), mode)),
        "loader path, draft mode": lambda blob: crop(read_lazy(io.BytesIO(blob), mode, smallest=2 * size)),
        "device path, loader part": lambda blob: draw(read_encoded(io.BytesIO(blob), mode)),
    }
    times = {k: [] for k in ways}
    for round_ in range(rounds):
        for key in list(ways) if round_ % 2 == 0 else list(ways)[::-1]:
            start = time.process_time()
            for k, blob in enumerate(blobs):
                with seeded(k):  # the same crop boxes for every way
                    ways[key](blob)
            times[key].append((time.process_time() - start) / len(blobs) * 1e6)
    return times


def seed_times(count: int, rounds: int) -> dict[str, list[float]]:
    import numpy as np

    from deit.data.sampling import sample_seed, sample_seeds, seed_everything

    def seedsequence(position: int) -> int:
        return int(np.random.SeedSequence([0, 1, position]).generate_state(1, np.uint64)[0]) >> 1

    ways = {
        "seed: SeedSequence (before)": lambda: [seedsequence(i) for i in range(count)],
        "seed: sample_seed": lambda: [sample_seed(0, 1, i) for i in range(count)],
        "seed: sample_seeds (an epoch at once)": lambda: sample_seeds(0, 1, np.arange(count)),
        "seed: the generators (seed_everything)": lambda: [seed_everything(i) for i in range(count)],
    }
    times = {k: [] for k in ways}
    for _ in range(rounds):
        for key, way in ways.items():
            start = time.process_time()
            way()
            times[key].append((time.process_time() - start) / count * 1e6)
    return times


class _Ready:
    """Samples already made (a view, its target, ...): what the loader hands over, without the work."""

    def __init__(self, sample, count: int):
        self.sample, self.count = sample, count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.sample


def handover_times(in_chans: int, size: int, rounds: int, batches: int = 48) -> dict[str, list[float]]:
    """Microseconds per batch of 32 for collation and the hand-over from 2 loader processes: our `Batch` (five
    fields, the small ones inside the pickle) against timm's (image, target, 0) through default_collate."""
    import torch
    from torch.utils.data import DataLoader

    from deit.data.sampling import collate_batch

    image = torch.zeros(in_chans, size, size)
    ours = DataLoader(_Ready((image, 3, 0, 7, 7), 32 * batches), batch_size=32, num_workers=2, collate_fn=collate_batch)
    timm = DataLoader(_Ready((image, 3, 0), 32 * batches), batch_size=32, num_workers=2)
    times = {"collate + hand-over (a batch)": [], "collate + hand-over (a batch), timm": []}
    for loader in (ours, timm):  # start the processes once before timing
        sum(1 for _ in loader)
    for _ in range(rounds):
        for key, loader in zip(times, (ours, timm)):
            start = time.perf_counter()
            sum(1 for _ in loader)
            times[key].append((time.perf_counter() - start) / batches * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="JPEGs of each kind")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch

    from deit.benchmark import jpeg_dataset, save_record, view_transforms
    from deit.distributed import machine

    torch.set_num_threads(1)  # as in a loader process
    record = {
        "benchmark": "bench_views",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "kinds": {},
    }
    for kind, (in_chans, jpeg_size, size) in KINDS.items():
        jpegs = jpeg_dataset(args.images, in_chans, jpeg_size)
        transforms = view_transforms(size, in_chans, torch.device("cpu"))
        pick = {key: transforms[key] for key in ("ours", "timm", "crop")}
        measured = step_times(jpegs.blobs, jpegs.mode, pick, args.rounds)
        med = {k: statistics.median(v) for k, v in measured["ours"].items()}
        base = {k: statistics.median(v) for k, v in measured["timm"].items()}
        print(f"{kind}: {args.images} JPEGs {jpeg_size[0]}x{jpeg_size[1]}, CPU us per sample, median of rounds")
        print(f"  {'step':24s} {'timm us':>8s} {'ours us':>8s} {'timm / ours':>12s}")
        for name in base:
            print(f"  {name:24s} {base[name]:8.1f} {med[name]:8.1f} {base[name] / med[name]:11.2f}x")
        total_t, total_o = sum(base.values()), sum(med.values())
        print(f"  {'total':24s} {total_t:8.1f} {total_o:8.1f} {total_t / total_o:11.2f}x")
        loader_part = measured["crop"]
        part = sum(statistics.median(v) for v in loader_part.values())
        name = "--batch-aug loader part"  # decode, crop, flip: the rest is done on the device
        print(f"  {name:24s} {total_t:8.1f} {part:8.1f} {total_t / part:11.2f}x")
        hand = {k: statistics.median(v) for k, v in handover_times(in_chans, size, args.rounds).items()}
        for key, value in hand.items():
            print(f"  {key:40s} {value:8.1f} us")
        record["kinds"][kind] = {
            "jpeg_size": list(jpeg_size),
            "img_size": size,
            "timm_us": base,
            "ours_us": med,
            "timm_over_ours": total_t / total_o,
            "batch_aug_loader_part_us": {k: statistics.median(v) for k, v in loader_part.items()},
            "handover_us_per_batch": hand,
        }
    print("a view's loader part from the file's bytes, CPU us per sample, median of rounds:")
    for kind, (in_chans, jpeg_size, size) in {**KINDS, **LARGE}.items():
        count = max(4, args.images // 8) if kind in LARGE else args.images
        jpegs = jpeg_dataset(count, in_chans, jpeg_size)
        parts = {
            k: statistics.median(v) for k, v in loader_part_times(jpegs.blobs, jpegs.mode, size, args.rounds).items()
        }
        whole = parts["loader path, whole decode"]
        print(f"  {kind}: {count} JPEGs {jpeg_size[0]}x{jpeg_size[1]}")
        for key, value in parts.items():
            print(f"    {key:32s} {value:9.1f} us  {whole / value:6.2f}x")
        record.setdefault("loader_part_us", {})[kind] = {"jpeg_size": list(jpeg_size), "img_size": size, **parts}
    seeds = {k: statistics.median(v) for k, v in seed_times(4096, args.rounds).items()}
    print("replay seed, CPU us per sample:")
    for key, value in seeds.items():
        print(f"  {key:40s} {value:6.2f}")
    record["seed_us"] = seeds
    save_record(record, args.out)


if __name__ == "__main__":
    main()
