"""A training run's loaders: the training views (augmented per image in loader processes, or a batch at a time on
the training device), the evaluation batches, and the teacher's pass over the views for a teacher cache."""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, Dataset

from ..stopping import loader_worker_init
from .batch_aug import BatchAugment
from .datasets import ArrayDataset, ImageFolderDataset
from .device_views import DeviceDecoder, DeviceEvalBatches, DrawView, read_encoded
from .images import read_lazy
from .sampling import (
    EvalBatches,
    SeededDataset,
    SeededSampler,
    ShardSampler,
    TensorBatches,
    collate_batch,
    collate_readable,
    train_sampler,
)
from .shards.streams import DEFAULT_SHUFFLE, EvalStream, ShardOrder, ShardSet, loader
from .transforms import Recipe, crop_transform, eval_transform, train_transform


def loader_options(num_workers: int, pin_memory: bool) -> dict:
    """DataLoader settings shared by a run's loaders. With loader processes, a generator of their own: a DataLoader
    draws its workers' base seed whenever it starts an iterator, which a persistent loader does in the first epoch
    a process runs only; drawn from the global generator, a resumed run's drop path and Mixup would be shifted from
    the uninterrupted run's. (Without processes, every epoch starts an iterator: one draw each, resumed or not.)"""
    return dict(
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=loader_worker_init,
        **({"generator": torch.Generator()} if num_workers > 0 else {}),
    )


def worker_count(train_set: Dataset, batch_aug: bool, num_workers: int) -> int:
    """Loader processes for a run: none when the images are in memory and augmented a batch at a time (a loader
    would have nothing to do)."""
    return 0 if batch_aug and isinstance(train_set, ArrayDataset) else num_workers


def input_path(train_set: Dataset, batch_aug: bool, asked: str, device: torch.device) -> str:
    """Where the training images become views (`device_views.INPUT_PATHS`, resolved): "memory" (a built-in set,
    augmented a batch at a time), "loader" (files decoded by the loader processes) or "device"."""
    if asked == "device" and isinstance(train_set, ArrayDataset):
        raise ValueError(
            "--input-path device is for image files; this data set is held in memory (with --batch-aug its batches "
            "are augmented on the training device already): drop --input-path"
        )
    if asked == "device" and not batch_aug:
        raise ValueError("--input-path device decodes and crops a batch at a time: add --batch-aug")
    if isinstance(train_set, ArrayDataset) and batch_aug:
        return "memory"
    if asked == "auto":
        return "device" if batch_aug and device.type == "cuda" and not isinstance(train_set, ArrayDataset) else "loader"
    return asked


def training_views(
    train_set: Dataset,
    recipe: Recipe,
    *,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_aug: bool,
    path: str = "loader",
    device: torch.device | str = "cpu",
    jpeg_draft: bool = False,
) -> tuple[BatchAugment | None, DeviceDecoder | None]:
    """Give the training split its per-image transform; returns the batch augmentation when `batch_aug`, and on
    the device input path (`path`, from `input_path`) its decoder.

    Without batch augmentation, the whole recipe runs per image. With it, images in memory get the whole recipe a
    batch at a time; image files are cropped and flipped to one size per image (under its own seed), by the loader
    processes or, on the device path, by the device from the bytes they read; the batch gets the rest
    (RandAugment, erasing, ...). `jpeg_draft`: a folder's JPEGs on the loader path are decoded by their random
    resized crop, at a lower scale where the box allows (`images.read_lazy`).
    """
    if jpeg_draft and isinstance(train_set, ImageFolderDataset) and path != "device" and not recipe.src:
        # only images of at least twice the input size can have a crop box that large
        train_set.reader = functools.partial(read_lazy, smallest=2 * img_size)
    if not batch_aug:
        train_set.transform = train_transform(img_size, mean=mean, std=std, recipe=recipe)
        return None, None
    if isinstance(train_set, ArrayDataset):
        return BatchAugment(img_size, mean=mean, std=std, recipe=recipe), None
    crop = crop_transform(img_size, recipe)
    rest = BatchAugment(
        img_size, mean=mean, std=std, recipe=replace(recipe, crop_scale=1.0, hflip=0.0, src=False), ratio=(1.0, 1.0)
    )
    if path != "device":
        train_set.transform = crop
        return rest, None
    train_set.reader = read_encoded
    train_set.transform = DrawView(*crop.transforms[:2])
    return rest, DeviceDecoder(img_size, len(mean), torch.device(device))


def training_order(
    train_set: Dataset,
    *,
    seed: int,
    rank: int,
    world_size: int,
    repeated_aug: bool,
    repeat: int = 1,
    shuffle_buffer: int | None = None,
) -> SeededSampler | ShardOrder:
    """Which training samples a process sees in each epoch: a `SeededSampler` (`sampling.train_sampler`), or for
    shards their `ShardOrder`, shuffled through a buffer of `shuffle_buffer` samples per loader worker."""
    if isinstance(train_set, ShardSet):
        copies = 3 if repeated_aug and world_size > 1 else 1
        buffer = DEFAULT_SHUFFLE if shuffle_buffer is None else shuffle_buffer
        return ShardOrder(train_set, seed, rank, world_size, copies, buffer)
    return train_sampler(
        train_set, seed=seed, rank=rank, world_size=world_size, repeated_aug=repeated_aug, repeat=repeat
    )


def train_loader(
    train_set: Dataset, sampler: SeededSampler | ShardOrder, *, batch_size: int, batch_aug: bool, options: dict
):
    """`Batch`es of the training views in the sampler's order, the last partial batch dropped."""
    if isinstance(sampler, ShardOrder):
        return loader(sampler.train_stream(batch_size, options["num_workers"]), options)
    if batch_aug and isinstance(train_set, ArrayDataset):
        return TensorBatches(train_set.tensor(), train_set.targets, sampler, batch_size)
    return DataLoader(
        SeededDataset(train_set),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_batch,
        **options,
    )


def cache_loader(train_set: Dataset, sampler: SeededSampler | ShardOrder, *, batch_size: int, options: dict):
    """Every training view of an epoch, in larger batches, for the teacher's pass (views drawn per image only: views
    drawn per batch need the training batches themselves)."""
    if isinstance(sampler, ShardOrder):
        return loader(sampler.cache_stream(max(batch_size, 256), options["num_workers"]), options)
    return DataLoader(
        SeededDataset(train_set), batch_size=max(batch_size, 256), sampler=sampler, collate_fn=collate_batch, **options
    )


def eval_loader(
    val_set: Dataset,
    *,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str,
    crop_ratio: float,
    batch_size: int,
    rank: int,
    world_size: int,
    options: dict,
    path: str = "loader",
    device: torch.device | str = "cpu",
):
    """(images, targets) batches of this process's share of the validation split, prepared for evaluation; on the
    device input path (`path`), image files decoded and prepared on `device` (the same views)."""
    if path == "device" and not isinstance(val_set, ArrayDataset):
        val_set.reader, val_set.transform = read_encoded, None
        files = _readable_batches(val_set, batch_size, rank, world_size, options)
        decoder = DeviceDecoder(img_size, len(mean), torch.device(device))
        return DeviceEvalBatches(files, decoder, crop_ratio=crop_ratio, interpolation=interpolation, mean=mean, std=std)
    val_set.transform = eval_transform(img_size, mean=mean, std=std, interpolation=interpolation, crop_ratio=crop_ratio)
    if isinstance(val_set, ArrayDataset) and crop_ratio == 1.0 and val_set.images.shape[1:3] == (img_size, img_size):
        # already at the model's size: evaluation only converts and normalises, a batch at a time
        return EvalBatches(
            val_set.tensor(),
            val_set.targets,
            mean=mean,
            std=std,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
        )
    return _readable_batches(val_set, batch_size, rank, world_size, options)


def _readable_batches(val_set: Dataset, batch_size: int, rank: int, world_size: int, options: dict):
    """(images, targets, unreadable) batches of this process's share, through the split's transform."""
    if isinstance(val_set, ShardSet):
        stream = EvalStream(
            val_set, rank=rank, world_size=world_size, batch_size=batch_size, workers=options["num_workers"]
        )
        return loader(stream, options)
    sampler = ShardSampler(len(val_set), rank, world_size)
    return DataLoader(val_set, batch_size=batch_size, sampler=sampler, collate_fn=collate_readable, **options)
