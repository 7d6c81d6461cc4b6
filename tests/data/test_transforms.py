"""The per-image training steps that replace timm's: the same maths and the same draws, cheaper per call."""

import collections
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from torchvision.transforms import functional as TF

from deit.data.sampling import Batch, SeededDataset, collate_batch, sample_seed, sample_seeds, train_sampler
from deit.data.transforms import (
    FastRandAugment,
    HorizontalFlip,
    Recipe,
    ResizedCrop,
    ToNormalizedTensor,
    ToUint8Tensor,
    train_transform,
)


def _image(shape, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels, "L" if len(shape) == 2 else "RGB")


@pytest.mark.parametrize(
    ("shape", "mean", "std"),
    [((28, 28), (0.5,), (0.25,)), ((31, 17, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((1, 1), (0.1,), (3,))],
)
def test_normalized_tensor_is_totensor_then_normalize(shape, mean, std):
    """(x / 255 - mean) / std in float32 either way: equal up to the rounding of the last operations (values of at
    most (1 - mean) / std, whose float32 spacing is below 1e-6 here)."""
    image = _image(shape)
    ours = ToNormalizedTensor(mean, std)(image)
    theirs = TF.normalize(TF.to_tensor(image), mean, std)
    assert ours.shape == theirs.shape and ours.dtype == torch.float32 and ours.is_contiguous()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
    assert torch.equal(ToUint8Tensor()(image), TF.pil_to_tensor(image))


def test_normalized_tensor_takes_other_modes_through_torchvision():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8), "RGBA")
    ours = ToNormalizedTensor((0.5,) * 4, (0.5,) * 4)(image)
    assert torch.equal(ours, TF.normalize(TF.to_tensor(image), (0.5,) * 4, (0.5,) * 4))


def test_resized_crop_of_the_whole_image_is_a_resize():
    """Scale and aspect ranges of exactly 1 leave one box, the whole (square) image: one resize of it."""
    image = _image((40, 40, 3))
    crop = ResizedCrop(28, scale=(1.0, 1.0), ratio=(1.0, 1.0), interpolation="bicubic")
    assert np.array_equal(np.asarray(crop(image)), np.asarray(image.resize((28, 28), Image.BICUBIC)))


def test_resized_crop_draws_boxes_as_timm_does():
    """The same box parameters from the same Python generator state as timm's RandomResizedCrop."""
    image = _image((50, 37))
    crop = ResizedCrop(16, scale=(0.08, 1.0), interpolation="bilinear")
    for seed in range(20):
        random.seed(seed)
        box = crop.get_params(image, crop.scale, crop.ratio)
        random.seed(seed)
        out = crop(image)
        top, left, h, w = box
        expected = image.resize((16, 16), Image.BILINEAR, box=(left, top, left + w, top + h))
        assert out.size == (16, 16) and np.array_equal(np.asarray(out), np.asarray(expected))


def test_horizontal_flip_mirrors_with_its_probability():
    image = _image((6, 9, 3))
    mirrored = np.asarray(image)[:, ::-1]
    assert np.array_equal(np.asarray(HorizontalFlip(1.0)(image)), mirrored)
    assert HorizontalFlip(0.0)(image) is image
    random.seed(0)
    flips = sum(np.array_equal(np.asarray(HorizontalFlip(0.5)(image)), mirrored) for _ in range(2000))
    assert 900 < flips < 1100  # binomial(2000, 0.5): 5 standard deviations either side


class _Counting:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __call__(self, img):
        self.calls.append(self.name)
        return img


def test_randaugment_draws_its_layers_uniformly_with_replacement_as_timm():
    """timm draws an unweighted policy's ops with replacement (np.random.choice(..., replace=True)): each of the
    n ops with probability 1/n per layer, the same op twice in 1/n of the images."""
    calls = []
    ops = [_Counting(k, calls) for k in range(5)]
    augment = FastRandAugment(ops, num_layers=2)
    random.seed(0)
    repeats, counts = 0, collections.Counter()
    for _ in range(5000):
        calls.clear()
        augment(None)
        assert len(calls) == 2
        repeats += calls[0] == calls[1]
        for k in calls:
            counts[k] += 1
    # 10,000 draws of 5 ops: each 2,000 +- 40 (binomial std), a repeat in 1,000 +- 28 of the 5,000 images
    assert all(abs(c - 2000) < 200 for c in counts.values()), counts
    assert abs(repeats - 1000) < 140


def test_train_transform_replaces_timms_steps_and_keeps_the_others():
    recipe = Recipe()
    ours = train_transform(28, mean=(0.5,), std=(0.5,), recipe=recipe)
    names = [type(step).__name__ for step in ours.transforms]
    assert names == ["ResizedCrop", "HorizontalFlip", "FastRandAugment", "ToNormalizedTensor", "RandomErasing"]
    timm = create_transform(28, is_training=True, auto_augment=recipe.aa, interpolation="bicubic", re_prob=0.25)
    theirs = next(step for step in timm.transforms if hasattr(step, "ops"))
    assert [op.name for op in ours.transforms[2].ops] == [op.name for op in theirs.ops]
    out = ours(_image((40, 33)))
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32


def test_sample_seeds_are_sample_seed_and_distinct():
    positions = np.arange(0, 20_000, 7)
    for seed, epoch in [(0, 0), (1, 0), (0, 1), (2**40 + 3, 299)]:
        seeds = sample_seeds(seed, epoch, positions)
        assert seeds == [sample_seed(seed, epoch, int(p)) for p in positions]
        assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert set(sample_seeds(0, 0, positions)).isdisjoint(sample_seeds(0, 1, positions))


def test_seeds_spread_over_their_bits():
    """Neighbouring positions give unrelated seeds: each of the 63 bits set in about half of them."""
    seeds = np.array(sample_seeds(0, 0, np.arange(4096)), dtype=np.uint64)
    ones = [int(((seeds >> np.uint64(b)) & np.uint64(1)).sum()) for b in range(63)]
    assert all(abs(c - 2048) < 200 for c in ones)  # binomial(4096, 1/2): std 32


class _Images(torch.utils.data.Dataset):
    def __init__(self, n):
        self.images = [_image((12, 12), seed) for seed in range(n)]
        self.transform = train_transform(8, mean=(0.5,), std=(0.5,), recipe=Recipe(crop_scale=0.3))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(self.images[index]), index % 3, 0


def test_batches_from_loader_processes_are_the_batches_made_in_process():
    """A Batch pickles its small tensors by value: through 2 loader processes the batches (views, targets,
    positions, indices) are the ones the main process makes from the same seeds."""
    data = SeededDataset(_Images(24))
    sampler = train_sampler(data, seed=3, rank=0, world_size=1, repeated_aug=False)
    kwargs = dict(batch_size=6, sampler=sampler, collate_fn=collate_batch)
    alone = list(torch.utils.data.DataLoader(data, **kwargs))
    workers = list(torch.utils.data.DataLoader(data, num_workers=2, **kwargs))
    assert len(alone) == len(workers) == 4
    for a, b in zip(alone, workers):
        assert isinstance(b, Batch)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and torch.equal(x, y)
    batch = alone[0]
    again = pickle.loads(pickle.dumps(batch))
    assert isinstance(again, Batch) and all(torch.equal(x, y) for x, y in zip(batch, again))
