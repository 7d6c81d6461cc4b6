"""Each epoch's samples per process and loader worker (`TrainStream`, `CacheStream`, `EvalStream` over a `ShardSet`),
in an order that follows from (seed, epoch, processes, workers, batch, shuffle buffer) alone: a resumed run repeats
it (see the package's docstring)."""

from __future__ import annotations

import io
import itertools
import logging
import multiprocessing
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from ..images import read_image
from ..sampling import Batch, collate_batch, collate_readable, sample_seed, seeded
from .index import INDEX, SEEK_EVERY, Split, expand, is_pattern, read_index
from .tar import IMAGE_KEYS, Tally, label_of, tar_samples

log = logging.getLogger("deit")


DEFAULT_SHUFFLE = 2000


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The order the shards are read in one epoch of training."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5A4D]))
    return rng.permutation(n_shards).tolist()


def pieces(sizes: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(shard, first, end) runs covering samples [start, stop) of the sequence made by shards of `sizes`, in order;
    `shard` is the place in `sizes`."""
    out, offset = [], 0
    for shard, size in enumerate(sizes):
        lo, hi = max(start, offset), min(stop, offset + size)
        if lo < hi:
            out.append((shard, lo - offset, hi - offset))
        offset += size
    return out


def train_steps(samples: int, world_size: int, batch_size: int) -> int:
    return samples // (world_size * batch_size)


def worker_span(count: int, worker: int, workers: int, unit: int = 1) -> tuple[int, int]:
    """Worker `worker`'s contiguous share [a, b) of `count` items handed out in whole units (batches)."""
    units = -(-count // unit)
    a, b = units * worker // workers, units * (worker + 1) // workers
    return min(a * unit, count), min(b * unit, count)


def train_span(samples: int, rank: int, world_size: int, batch_size: int, worker: int, workers: int):
    """Positions [a, b) of the epoch's (expanded) sequence that a training worker reads: whole batches only."""
    steps = train_steps(samples, world_size, batch_size)
    block = rank * steps * batch_size
    a, b = worker_span(steps * batch_size, worker, workers, batch_size)
    return block + a, block + b


def eval_span(samples: int, rank: int, world_size: int, worker: int, workers: int) -> tuple[int, int]:
    """Samples [a, b) a worker reads when every sample is read once (evaluation, a teacher cache)."""
    lo, hi = samples * rank // world_size, samples * (rank + 1) // world_size
    a, b = worker_span(hi - lo, worker, workers)
    return lo + a, lo + b


class ShardSet:
    """A split of shards as a data set: `len` samples, a `.transform` set by the run (as on the other data sets),
    and the epoch its streams read (shared with persistent loader workers)."""

    def __init__(self, split: Split, *, grayscale: bool, intensity: str = "minmax"):
        self.split, self.mode, self.intensity = split, "L" if grayscale else "RGB", intensity
        self.class_names = split.class_names
        self.transform: Callable | None = None
        self.reader = read_image  # the device input path reads bytes instead (`device_views.read_encoded`)
        self._epoch = multiprocessing.get_context().Value("q", 0, lock=False)
        self._offsets = np.cumsum([0] + [s.samples for s in split.shards]).tolist()

    def __len__(self) -> int:
        return self.split.samples

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def read(self, shard: int, first: int, end: int) -> Iterator[tuple[int, dict | None]]:
        """(id, sample as `tar_samples` gives it) for samples [first, end) of a shard; (id, None) for each sample the
        shard lacks (a damaged or short file is named in a warning, and the stream keeps its length)."""
        path = self.split.shards[shard].path
        seeks = self.split.shards[shard].seeks
        block = min(first // SEEK_EVERY, len(seeks) - 1) if seeks else 0  # start at the nearest recorded sample
        tally = Tally()
        stream = tar_samples(path, seeks[block] if block > 0 else 0, tally=tally)
        skip = first - block * SEEK_EVERY
        got = 0
        for got, sample in enumerate(itertools.islice(stream, skip, skip + end - first), start=1):
            yield self._offsets[shard] + first + got - 1, sample
        stream.close()
        if tally.report(path):
            log.warning(tally.report(path))
        if got < end - first:
            why = f": {tally.damage}" if tally.damage else ""
            log.warning(
                f"{path} ended after {first + got} samples, the index says {self.split.shards[shard].samples}{why}"
            )
            for k in range(first + got, end):
                yield self._offsets[shard] + k, None

    def sequence(self, order: list[int], start: int, stop: int) -> Iterator[tuple[int, dict | None]]:
        """Samples [start, stop) of the shards read in `order`."""
        sizes = [self.split.shards[i].samples for i in order]
        for place, first, end in pieces(sizes, start, stop):
            yield from self.read(order[place], first, end)

    def decode(self, sample: dict | None, sample_id: int) -> tuple[Image.Image, int]:
        """The image and class of a sample; ValueError naming it when either is missing or unreadable."""
        if sample is None:
            raise ValueError(f"sample {sample_id}: missing from its shard")
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', sample_id)}"
        ext = next((k for k in IMAGE_KEYS if sample.get(k) is not None), None)
        if ext is None:
            if "__oversized__" in sample:
                raise ValueError(f"{name}: its {sample['__oversized__']}")
            raise ValueError(f"{name}: no image ({', '.join(sorted(k for k in sample if not k.startswith('_')))})")
        target = label_of(sample.get("cls"))
        if not 0 <= target < len(self.class_names):
            raise ValueError(
                f"{name}: class {(sample.get('cls') or b'')[:20]!r} is not one of the {len(self.class_names)}"
            )
        return self.reader(io.BytesIO(sample[ext]), self.mode, self.intensity, name=f"{name}.{ext}"), target


@dataclass
class ShardOrder:
    """A training run's order over shards, in the place of a sampler: `set_epoch` moves every stream of the set."""

    shards: ShardSet
    seed: int
    rank: int
    world_size: int
    copies: int = 1
    shuffle: int = DEFAULT_SHUFFLE

    def set_epoch(self, epoch: int) -> None:
        self.shards.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.shards)

    def train_stream(self, batch_size: int, workers: int) -> TrainStream:
        return TrainStream(
            self.shards,
            **self._place(),
            batch_size=batch_size,
            workers=workers,
            copies=self.copies,
            shuffle=self.shuffle,
        )

    def cache_stream(self, batch_size: int, workers: int) -> CacheStream:
        return CacheStream(self.shards, **self._place(), batch_size=batch_size, workers=workers)

    def _place(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size}


def val_source(data_path: str) -> str:
    """Where the validation shards of a run training from `data_path` are: the val split of the index in the folder
    (the pattern's folder, for a pattern)."""
    if not is_pattern(data_path):
        return data_path
    folder = Path(expand(data_path)[0]).parent
    if (folder / INDEX).exists() and "val" in read_index(folder)["splits"]:
        return str(folder)
    raise ValueError(
        f"--data-path {data_path} names training shards and {folder} holds no index with a val split: give the "
        "validation shards with --val-path (a pattern, or a folder with an index)"
    )


class TrainStream(IterableDataset):
    """One process's training batches (`Batch`es) of an epoch of shards; see the module's docstring.

    `copies` > 1 is repeated augmentation: each sample read is used `copies` times in a row (before the shuffle
    buffer), each copy a view of its own (position copy x samples + id), and the epoch keeps its length.
    """

    def __init__(
        self,
        shards: ShardSet,
        *,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
        workers: int,
        copies: int = 1,
        shuffle: int = DEFAULT_SHUFFLE,
    ):
        self.shards, self.seed, self.rank, self.world_size = shards, seed, rank, world_size
        self.batch_size, self.workers, self.copies, self.shuffle = batch_size, max(workers, 1), copies, shuffle

    def __len__(self) -> int:
        return train_steps(len(self.shards), self.world_size, self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        import webdataset as wds

        worker = _worker(self.workers)
        epoch, n = self.shards.epoch, len(self.shards)
        a, b = train_span(n, self.rank, self.world_size, self.batch_size, worker, self.workers)
        order = shard_order(len(self.shards.split.shards), self.seed, epoch)
        c = self.copies
        read = self.shards.sequence(order, a // c, (b - 1) // c + 1 if b > a else a // c)
        views = (
            (k * n + sample_id, sample_id, sample)
            for d, (sample_id, sample) in enumerate(read, start=a // c)
            for k in range(c)
            if a <= d * c + k < b
        )
        if self.shuffle > 1:
            buffer_seed = int(
                np.random.SeedSequence([self.seed, epoch, self.rank, worker, 0x5B0F]).generate_state(1)[0]
            )
            views = wds.shuffle(self.shuffle, self.shuffle, rng=random.Random(buffer_seed))(views)
        batch = []
        for item in _substituted(self.shards, views, self.seed, epoch):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield collate_batch(batch)
                batch = []


def _substituted(shards: ShardSet, views, seed: int, epoch: int):
    """(view, target, skipped, position, id) per view: an unreadable sample is named once and replaced by the last
    readable one (by the next, before the first), augmented under its own seed, so the stream keeps its length."""
    last = None
    waiting = []
    for position, sample_id, sample in views:
        try:
            image, target = shards.decode(sample, sample_id)
            skipped = 0
            last = image, target
        except ValueError as e:
            if sample is not None:  # a sample the shard lacks was reported with the shard
                log.warning(f"skipping unreadable sample {e}")
            if last is None:
                waiting.append((position, sample_id))
                continue
            (image, target), skipped = last, 1
        for held_position, held_id in waiting:
            yield _view(shards, image, target, 1, held_position, held_id, seed, epoch)
        waiting = []
        yield _view(shards, image, target, skipped, position, sample_id, seed, epoch)
    if waiting:
        raise ValueError(f"none of {len(waiting)} samples of {shards.split.where} could be read")


def _view(shards: ShardSet, image, target, skipped, position, sample_id, seed, epoch):
    with seeded(sample_seed(seed, epoch, position)):
        view = shards.transform(image) if shards.transform else image
    return view, target, skipped, position, sample_id


class CacheStream(IterableDataset):
    """Every training view of an epoch once, in the index's order (`Batch`es, the last of each worker partial): the
    teacher's pass for a cache. Views are seeded by id, so they are the training stream's views in any layout."""

    def __init__(self, shards: ShardSet, *, seed: int, rank: int, world_size: int, batch_size: int, workers: int):
        self.shards, self.seed, self.rank, self.world_size = shards, seed, rank, world_size
        self.batch_size, self.workers = batch_size, max(workers, 1)

    def __len__(self) -> int:
        return _eval_batches(len(self.shards), self.rank, self.world_size, self.workers, self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        worker = _worker(self.workers)
        a, b = eval_span(len(self.shards), self.rank, self.world_size, worker, self.workers)
        order = list(range(len(self.shards.split.shards)))
        views = ((sample_id, sample_id, sample) for sample_id, sample in self.shards.sequence(order, a, b))
        items = _substituted(self.shards, views, self.seed, self.shards.epoch)
        for chunk in _chunks(items, self.batch_size):
            yield collate_batch(chunk)


class EvalStream(IterableDataset):
    """This process's share of a split for evaluation: (images, targets, unreadable) batches as `collate_readable`
    makes them; an unreadable sample is left out and counted, never replaced."""

    def __init__(self, shards: ShardSet, *, rank: int, world_size: int, batch_size: int, workers: int):
        self.shards, self.rank, self.world_size = shards, rank, world_size
        self.batch_size, self.workers = batch_size, max(workers, 1)

    def __len__(self) -> int:
        return _eval_batches(len(self.shards), self.rank, self.world_size, self.workers, self.batch_size)

    def __iter__(self):
        worker = _worker(self.workers)
        a, b = eval_span(len(self.shards), self.rank, self.world_size, worker, self.workers)
        order = list(range(len(self.shards.split.shards)))
        for chunk in _chunks(self.shards.sequence(order, a, b), self.batch_size):
            yield collate_readable([self._item(sample_id, sample) for sample_id, sample in chunk])

    def _item(self, sample_id: int, sample: dict | None):
        try:
            image, target = self.shards.decode(sample, sample_id)
        except ValueError as e:
            if sample is not None:
                log.warning(f"leaving out unreadable sample {e}")
            return None, -1, 1
        return (self.shards.transform(image) if self.shards.transform else image), target, 0


def _eval_batches(samples: int, rank: int, world_size: int, workers: int, batch_size: int) -> int:
    spans = (eval_span(samples, rank, world_size, w, workers) for w in range(workers))
    return sum(-(-(b - a) // batch_size) for a, b in spans)


def _worker(workers: int) -> int:
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0
    if info.num_workers != workers:
        raise RuntimeError(f"a shard stream built for {workers} loader workers runs under {info.num_workers}")
    return info.id


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def loader(stream: IterableDataset, options: dict) -> DataLoader:
    """A DataLoader over a stream that batches itself (its `len` is its batch count)."""
    options = {**options, "num_workers": stream.workers if options.get("num_workers") else 0}
    if not options["num_workers"]:
        options["persistent_workers"] = False
    return DataLoader(stream, batch_size=None, **options)
