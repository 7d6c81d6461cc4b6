"""The data parts: the training augmentation on JPEG bytes through a DataLoader, ours against timm's transform, and
a whole distilled pass over them (loader, augmentation, teacher or its cache, student step) against the official
loop."""

from __future__ import annotations

import functools
import io
import tempfile
from collections.abc import Callable

import torch

from ..distributed import threads_beside
from .steps import synthetic_cache
from .timing import Bench, no_sync, paired_rates, report, sync_device


class Jpegs(torch.utils.data.Dataset):
    """JPEG bytes decoded per sample through `transform`, as (image, target, skipped); `encoded`: read as the
    device input path reads them (`device_views.read_encoded`: the bytes, decoded later on the device)."""

    def __init__(self, blobs: list[bytes], mode: str, transform=None, encoded: bool = False):
        self.blobs, self.mode, self.transform, self.encoded = blobs, mode, transform, encoded

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, index):
        from PIL import Image

        from ..data.device_views import read_encoded

        if self.encoded:
            image = read_encoded(io.BytesIO(self.blobs[index]), self.mode, name=str(index))
        else:
            image = Image.open(io.BytesIO(self.blobs[index])).convert(self.mode)
        return self.transform(image), index % 10, 0


def jpeg_dataset(count: int, in_chans: int, size: tuple[int, int] = (500, 375)):
    """`count` random-content JPEGs held as bytes, decoded per sample (the data a real run reads)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    mode = "L" if in_chans == 1 else "RGB"
    blobs = []
    for _ in range(count):
        low = rng.integers(0, 256, (size[1] // 8, size[0] // 8, in_chans), dtype=np.uint8)  # smooth-ish content
        image = Image.fromarray(low.squeeze(-1) if in_chans == 1 else low, mode).resize(size, Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return Jpegs(blobs, mode)


def view_transforms(size: int, in_chans: int, dev: torch.device) -> dict:
    """The training augmentation: ours and timm's per image; crop and flip per image with the rest per batch; the
    device path's draw per image, its decoder and the rest per batch."""
    from timm.data import create_transform

    from ..data.batch_aug import BatchAugment
    from ..data.device_views import DeviceDecoder, DrawView
    from ..data.transforms import Recipe, crop_transform, keep_posterize_bits, train_transform

    mean, std = (0.5,) * in_chans, (0.25,) * in_chans
    ours_tf = train_transform(size, mean=mean, std=std)
    timm_tf = create_transform(
        size,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.25,
        color_jitter=0.3,
        interpolation="bicubic",
        mean=mean,
        std=std,
    )
    # (random erasing with timm's default fill, "const", cheaper than the recipe's per-pixel noise ours draws)
    keep_posterize_bits(timm_tf)  # as ours: this Pillow refuses timm's 0-bit posterize
    crop = crop_transform(size, Recipe())
    return {
        "ours": ours_tf,
        "timm": timm_tf,
        # --batch-aug: the loader decodes, crops and flips; RandAugment, erasing and normalisation run on the
        # batch, on the training device
        "crop": crop,
        "batch": BatchAugment(size, mean=mean, std=std, recipe=Recipe(crop_scale=1.0, hflip=0.0), ratio=(1.0, 1.0)),
        # --input-path device: the loader reads the bytes and draws the crop box; the device decodes and crops
        "draw": DrawView(*crop.transforms[:2]),
        "decode": DeviceDecoder(size, in_chans, dev),
    }


def _jpeg_loader(
    jpegs: Jpegs, transform, seeded: bool, *, bs: int, num_workers: int, dev: torch.device, encoded: bool = False
):
    """The JPEGs through `transform`: ours seeded per sample (replayable), timm's plainly shuffled."""
    from ..data.sampling import SeededDataset, collate_batch, train_sampler

    dataset = Jpegs(jpegs.blobs, jpegs.mode, transform, encoded)  # the same JPEGs, its own transform
    kwargs = dict(
        batch_size=bs,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        pin_memory=dev.type == "cuda",
    )
    if seeded:
        sampler = train_sampler(dataset, seed=0, rank=0, world_size=1, repeated_aug=False)
        return torch.utils.data.DataLoader(SeededDataset(dataset), sampler=sampler, collate_fn=collate_batch, **kwargs)
    return torch.utils.data.DataLoader(dataset, shuffle=True, **kwargs)


def _loader_pass(loader, dev: torch.device, augment, decode=None) -> None:
    for step, (images, *_) in enumerate(loader):
        images = decode(images)[0] if decode is not None else images.to(dev, non_blocking=True)
        if augment is not None:
            augment(images, step)
    sync_device(dev)


def measure_data(b: Bench, jpegs: Jpegs, transforms: dict) -> list[dict]:
    bs, dev = b.batch_size, b.dev
    loader = functools.partial(_jpeg_loader, jpegs, bs=bs, num_workers=b.num_workers, dev=dev)
    run = {
        "ours": functools.partial(_loader_pass, loader(transforms["ours"], True), dev, None),
        "timm": functools.partial(_loader_pass, loader(transforms["timm"], False), dev, None),
        "ours, batch aug": functools.partial(_loader_pass, loader(transforms["crop"], True), dev, transforms["batch"]),
        "ours, device path": functools.partial(
            _loader_pass, loader(transforms["draw"], True, encoded=True), dev, transforms["batch"], transforms["decode"]
        ),
    }
    measured = paired_rates(run, (len(jpegs) // bs) * bs, b.rounds, 1, no_sync)
    return [
        report(f"data pipeline ({b.num_workers} workers)", measured, "ours", "timm"),
        report(f"data pipeline, batch aug on {dev.type}", measured, "ours, batch aug", "timm"),
        report(f"data pipeline, device path on {dev.type}", measured, "ours, device path", "timm"),
    ]


def _distilled_pass(
    loader, model, opt, loss, amp, dev, augment=None, cache=None, spans=None, x=None, decode=None
) -> None:
    """One pass over `loader` training `model`; with `cache`, the teacher's outputs read from it (batch i at
    `spans[i]`, stored for the stand-in batch `x`); with `decode`, the device path's decoder first."""
    for step, (images, targets, *_) in enumerate(loader):
        images = decode(images)[0] if decode is not None else images.to(dev, non_blocking=True)
        targets = targets.to(dev, non_blocking=True)
        if augment is not None:
            images = augment(images, step)
        with amp:
            out = model(images)
            if cache is not None:
                teacher_logits, _ = cache.lookup(0, spans[step], spans[step], x)
                total = loss.parts(images, out, targets, teacher_logits=teacher_logits)["loss"]
            else:
                total = loss.parts(images, out, targets)["loss"]
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync_device(dev)


def _threads_for(fn: Callable[[], None], threads: int) -> None:
    """`fn` run with `threads` compute threads, the count restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn()
    finally:
        torch.set_num_threads(before)


def measure_e2e(b: Bench, distillation, jpegs: Jpegs, transforms: dict) -> list[dict]:
    """A whole distilled pass over the JPEGs: loader, augmentation, teacher (or its cache), student step.

    Baseline: the official loop (timm's transform in the loader processes, the teacher's forward every step). Ours
    as `deit train` runs: the teacher cached; the views augmented per image in the loader processes (its default)
    or, with --batch-aug, cropped there and augmented a batch at a time on the device; on the CPU with the compute
    threads `deit train` gives itself beside its loader processes (`distributed.share_cpu_cores`).
    """
    teacher, loss, cached_loss = distillation
    bs, dev, num_workers = b.batch_size, b.dev, b.num_workers
    batches = len(jpegs) // bs
    loader = functools.partial(_jpeg_loader, jpegs, bs=bs, num_workers=num_workers, dev=dev)
    threads = threads_beside(num_workers) if dev.type == "cpu" and num_workers else torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        cache, spans = synthetic_cache(folder, b.cfg, teacher, b.x, batches, b.amp)
        official = loader(transforms["timm"], False), b.models["timm"], b.optimizers["timm"], loss, b.amp, dev
        ours = b.models[b.student], b.optimizers["ours"], cached_loss, b.amp, dev
        per_image = functools.partial(_distilled_pass, loader(transforms["ours"], True), *ours, None, cache, spans, b.x)
        batch_aug = functools.partial(
            _distilled_pass, loader(transforms["crop"], True), *ours, transforms["batch"], cache, spans, b.x
        )
        device_path = functools.partial(
            _distilled_pass,
            loader(transforms["draw"], True, encoded=True),
            *ours,
            transforms["batch"],
            cache,
            spans,
            b.x,
            transforms["decode"],
        )
        run = {
            "official loop": functools.partial(_distilled_pass, *official),
            "ours": functools.partial(_threads_for, per_image, threads),
            "ours, batch aug": functools.partial(_threads_for, batch_aug, threads),
            "ours, device path": functools.partial(_threads_for, device_path, threads),
        }
        measured = paired_rates(run, batches * bs, b.rounds, 1, no_sync)
    results = [
        report(f"end to end, distilled ({num_workers} workers)", measured, "ours", "official loop"),
        report(f"end to end, distilled, batch aug on {dev.type}", measured, "ours, batch aug", "official loop"),
        report(f"end to end, distilled, device path on {dev.type}", measured, "ours, device path", "official loop"),
    ]
    for result in results:
        result["threads"] = {"official loop": torch.get_num_threads(), "ours": threads}
    return results
