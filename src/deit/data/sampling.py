"""Which samples each process sees, and the random seed of every augmentation.

Every training sample is augmented under its own seed, drawn from (run seed, epoch, position in the epoch's global
order), and every batch is mixed (Mixup/CutMix) under a seed drawn from (run seed, epoch, process, step).
Augmentation is then a pure function of those: a resumed run repeats the interrupted one exactly, N processes see
the very images one process would see with the same global batch, and a cache of teacher outputs can replay a view
from its seed.
"""

from __future__ import annotations

import contextlib
import random
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, default_collate


class Batch(NamedTuple):
    """A training batch, as the loaders give it to the engine."""

    images: torch.Tensor  # (B, C, H, W): normalised floats, or uint8 when augmented a batch at a time, or an
    # `EncodedBatch` (the device input path: decoded and cropped on the training device)
    targets: torch.Tensor  # (B,) class indices; -1 for an image without its label (--unlabelled)
    skipped: torch.Tensor  # (B,) 1 where an unreadable file was replaced by another image
    positions: torch.Tensor  # (B,) each view's place in the epoch's global order, which seeds it
    indices: torch.Tensor  # (B,) each image's index in the data set

    def __reduce__(self):
        # From a loader process, each tensor would travel as a shared-memory file of its own, received through a
        # socket (measured: ~1 ms a batch for the four small ones); their numbers travel inside the pickle instead.
        if any(t.device.type != "cpu" for t in self[1:]):
            return Batch, tuple(self)
        return _batch_of, (self.images, *(t.numpy() for t in self[1:]))


def _batch_of(images: torch.Tensor, *numbers: np.ndarray) -> Batch:
    return Batch(images, *(torch.from_numpy(n) for n in numbers))


def collate_batch(samples: list[tuple]) -> Batch:
    """`SeededDataset` samples -> a `Batch` (the device input path's images: an `EncodedBatch`)."""
    from .device_views import Encoded, EncodedBatch

    if samples and isinstance(samples[0][0], Encoded):
        return Batch(EncodedBatch.of([s[0] for s in samples]), *default_collate([s[1:] for s in samples]))
    return Batch(*default_collate(samples))


_MASK = 2**64 - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: splitmix64's increment
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(z: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers in which every input bit moves every output bit."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _epoch_key(seed: int, epoch: int) -> int:
    return _mix((_mix((seed + _GOLDEN) & _MASK) + epoch * _GOLDEN) & _MASK)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch: splitmix64 over (seed, epoch, position), about a
    microsecond (numpy's SeedSequence takes 15); `sample_seeds` gives the same for many positions at once."""
    return _mix((_epoch_key(seed, epoch) + position * _GOLDEN) & _MASK) >> 1


def sample_seeds(seed: int, epoch: int, positions: np.ndarray) -> list[int]:
    """`sample_seed` of every position, computed as arrays (uint64 arithmetic wraps as the masks above do)."""
    z = np.uint64(_epoch_key(seed, epoch)) + np.asarray(positions, dtype=np.uint64) * np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return ((z ^ (z >> np.uint64(31))) >> np.uint64(1)).tolist()


def process_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a training process's own randomness (Mixup, drop path) in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1, np.uint64)[0]) >> 1


def batch_seed(seed: int, epoch: int, rank: int, step: int) -> int:
    """The seed of one batch's Mixup/CutMix draw (its lambda, box, and which images are mixed)."""
    return int(np.random.SeedSequence([seed, epoch, rank, step, 0xB47C]).generate_state(1, np.uint64)[0]) >> 1


def seed_everything(seed: int, cuda: bool = False) -> None:
    """Seed Python's, NumPy's and torch's global generators (timm's augmentations draw from all three).

    torch's CUDA generators too if `cuda`: that costs ~1 ms a call (torch queues a seed for every device), too much
    for every sample, which is augmented on the CPU anyway.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """The generators seeded for one sample's augmentation. In a DataLoader worker they belong to the worker; in the
    main process (no workers) their state is restored afterwards, so training randomness (drop path, Mixup) is not
    disturbed."""
    if torch.utils.data.get_worker_info() is not None:
        seed_everything(seed)
        yield
        return
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        seed_everything(seed)
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def collate_readable(samples: list[tuple]) -> tuple:
    """Batch an evaluation split's samples, leaving out unreadable files: (images, targets, unreadable count);
    images and targets are None when none of the batch could be read."""
    from .device_views import Encoded, EncodedBatch

    readable = [(image, target) for image, target, *_ in samples if image is not None]
    unreadable = torch.tensor(len(samples) - len(readable))
    if not readable:
        return None, None, unreadable
    if isinstance(readable[0][0], Encoded):  # the device input path: decoded and prepared on the device
        return EncodedBatch.of([image for image, _ in readable]), torch.tensor([t for _, t in readable]), unreadable
    images, targets = default_collate(readable)
    return images, targets, unreadable


class SeededSampler(Sampler):
    """Yields (index, seed, position) keys: the inner sampler's indices, their global position and its seed.

    The inner sampler (DistributedSampler, timm's RepeatAugSampler) gives process `rank` of `world_size` the global
    positions rank, rank + world_size, ...; so local position j is global position rank + j * world_size.
    """

    def __init__(self, sampler: Sampler, seed: int, rank: int = 0, world_size: int = 1):
        self.sampler, self.seed, self.rank, self.world_size = sampler, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        indices = list(self.sampler)
        positions = np.arange(len(indices)) * self.world_size + self.rank
        return zip(indices, sample_seeds(self.seed, self.epoch, positions), positions.tolist())


class SeededDataset(Dataset):
    """Looks up (index, seed[, position]) keys: seeds the generators, then returns dataset[index] as
    (image, target, skipped, position, index), so a batch (`collate_batch`) says which views it holds (see `seeded`
    for whose generators are seeded)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed, position = key if len(key) == 3 else (*key, -1)
        with seeded(seed):
            return self._item(index, position)

    def _item(self, index: int, position: int):
        image, target, *rest = self.dataset[index]
        return image, target, rest[0] if rest else 0, position, index


class TensorBatches:
    """Batches of an in-memory image set of one size, for batch augmentation (`batch_aug.BatchAugment`): yields
    `Batch`es of uint8 images (B, C, H, W) (none skipped), in a `SeededSampler`'s order and with
    its positions, without per-image work. The images are augmented later, a batch at a time, from the batch's seed.
    """

    def __init__(self, images: torch.Tensor, targets, sampler: SeededSampler, batch_size: int):
        self.images, self.targets = images, torch.as_tensor(targets, dtype=torch.int64)
        self.sampler, self.batch_size = sampler, batch_size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # the last, partial batch is dropped

    def __iter__(self):
        order = torch.as_tensor(list(self.sampler.sampler), dtype=torch.int64)
        rank, world = self.sampler.rank, self.sampler.world_size
        for step in range(len(self)):
            local = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
            indices = order[local]
            yield Batch(
                self.images[indices],
                self.targets[indices],
                torch.zeros(len(local), dtype=torch.int64),
                rank + local * world,
                indices,
            )


class EvalBatches:
    """Evaluation batches of an in-memory image set already at the model's input size: the uint8 images become
    normalised floats a batch at a time, with the very operations ToTensor and Normalize apply to each image (the
    same numbers), without loader processes. Process `rank` takes every world_size-th image, as `ShardSampler`."""

    def __init__(
        self, images: torch.Tensor, targets, *, mean, std, batch_size: int, rank: int = 0, world_size: int = 1
    ):
        shard = torch.arange(rank, len(images), world_size)
        self.images, self.targets = images[shard], torch.as_tensor(targets, dtype=torch.int64)[shard]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.images), self.batch_size):
            images = self.images[start : start + self.batch_size].float().div(255)
            yield images.sub_(self.mean).div_(self.std), self.targets[start : start + self.batch_size]


class ShardSampler(Sampler):
    """Evaluation: process `rank` takes every world_size-th sample, no padding, so each sample counts once."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def train_sampler(
    dataset: Dataset, *, seed: int, rank: int, world_size: int, repeated_aug: bool, repeat: int = 1
) -> SeededSampler:
    """Shuffled order from (seed, epoch), split over processes; repeated augmentation (3 copies) under DDP.

    `repeat` R: an epoch passes over the data set R times, shuffled as one set of R copies of each image (each copy
    in a view of its own: its position in the epoch seeds it)."""
    size = len(dataset)
    copies = range(size * repeat)  # the samplers below need only a length
    if repeated_aug and world_size > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        # RepeatAugSampler seeds its shuffle with the epoch only: fold the run seed into its epoch counter. An epoch
        # keeps a multiple of 256 samples when there are that many, else every sample: timm 1.0.30's rule, spelt
        # out because timm 1.0.29 kept none of a data set under 256 (an empty epoch)
        whole = 256 if len(copies) >= 256 else 0
        sampler = RepeatAugSampler(copies, num_replicas=world_size, rank=rank, shuffle=True, selected_round=whole)
        inner = _RunSeeded(sampler, seed)
    else:
        inner = DistributedSampler(copies, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return SeededSampler(_Modulo(inner, size) if repeat > 1 else inner, seed, rank, world_size)


class _Modulo(Sampler):
    """Indices of copies of a data set -> indices of the data set."""

    def __init__(self, sampler: Sampler, size: int):
        self.sampler, self.size = sampler, size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return (index % self.size for index in self.sampler)


class _RunSeeded(Sampler):
    def __init__(self, sampler: Sampler, seed: int):
        self.sampler, self.seed = sampler, seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.sampler)
