"""Batch augmentation (deit.data.batch_aug): each op against timm's PIL op on the same image and magnitude, the
crop/flip geometry against exact expectations, and the draws against the recipe's probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import auto_augment as A

from deit.data import Recipe
from deit.data.batch_aug import BatchAugment, _colour_op
from deit.data.datasets import build_dataset


@pytest.fixture(scope="module")
def digits():
    train, _ = build_dataset("mnist5k", None, True)
    return train.images[:48]


def _plain(*, mean=(0.0,), std=(1.0,), ratio=(1.0, 1.0), **recipe) -> BatchAugment:
    settings = dict(crop_scale=1.0, hflip=0.0, aa=None, color_jitter=0, reprob=0.0, train_interpolation="bilinear")
    return BatchAugment(28, mean=mean, std=std, ratio=ratio, recipe=Recipe(**{**settings, **recipe}))


def test_full_crop_is_the_image_and_flip_mirrors_it(digits):
    x = torch.from_numpy(digits).unsqueeze(1)
    assert torch.allclose(_plain()(x, 0), x.float() / 255, atol=1e-5)
    assert torch.allclose(_plain(hflip=1.0)(x, 0), x.float().flip(-1) / 255, atol=1e-5)


def _geometric(name: str, level: float, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    ops = [{name: (torch.ones(n, dtype=torch.bool), torch.full((n,), level))}]
    theta = _plain()._geometry(n, 28, 28, ops, torch.Generator().manual_seed(0))
    grid = F.affine_grid(theta, [n, 1, 28, 28], align_corners=False)
    return F.grid_sample(x.float() / 255, grid, mode="bilinear", align_corners=False)


@pytest.mark.parametrize(
    "name, pil_op, level",
    [
        ("Rotate", A.rotate, 25.0),
        ("Rotate", A.rotate, -12.0),
        ("ShearX", A.shear_x, 0.3),
        ("ShearY", A.shear_y, -0.2),
        ("TranslateXRel", A.translate_x_rel, 0.3),
        ("TranslateYRel", A.translate_y_rel, -0.25),
    ],
)
def test_geometric_ops_match_pil(digits, name, pil_op, level):
    """Same pixel map as PIL's affine transforms (timm's ops): differences only from PIL's 8-bit rounding."""
    x = torch.from_numpy(digits).unsqueeze(1)
    ours = _geometric(name, level, x)
    pil = np.stack([np.array(pil_op(Image.fromarray(d), level, resample=Image.BILINEAR, fillcolor=0)) for d in digits])
    theirs = torch.from_numpy(pil).unsqueeze(1).float() / 255
    assert (ours - theirs).abs().max() <= 1.01 / 255
    assert (ours - x.float() / 255).abs().mean() > 0.02  # the op did move the digit


@pytest.mark.parametrize(
    "name, pil_op, level",
    [
        ("AutoContrast", A.auto_contrast, None),
        ("Equalize", A.equalize, None),
        ("Invert", A.invert, None),
        ("PosterizeIncreasing", A.posterize, 2),
        ("SolarizeIncreasing", A.solarize, 100),
        ("SolarizeAdd", A.solarize_add, 60),
        ("ContrastIncreasing", A.contrast, 1.6),
        ("ContrastIncreasing", A.contrast, 0.3),
        ("BrightnessIncreasing", A.brightness, 1.5),
        ("SharpnessIncreasing", A.sharpness, 1.8),
        ("SharpnessIncreasing", A.sharpness, 0.2),
        ("ColorIncreasing", A.color, 0.4),
    ],
)
@pytest.mark.parametrize("rgb", [False, True])
def test_colour_ops_match_pil(digits, name, pil_op, level, rgb):
    images = np.stack([digits, np.roll(digits, 3, axis=0) // 2, 255 - digits], axis=-1) if rgb else digits
    mode = "RGB" if rgb else "L"
    args = () if level is None else (level,)
    pil = np.stack([np.array(pil_op(Image.fromarray(im, mode), *args)) for im in images])
    theirs = torch.from_numpy(pil).float() / 255
    x = torch.from_numpy(images).float() / 255
    x = x.permute(0, 3, 1, 2) if rgb else x.unsqueeze(1)
    theirs = theirs.permute(0, 3, 1, 2) if rgb else theirs.unsqueeze(1)
    ours = _colour_op(name, x, torch.full((len(x),), float(level or 0)))
    # PIL truncates blends to 8 bits (and its gray to 8 bits before blending): a level or two
    assert (ours - theirs).abs().max() <= 2.01 / 255, name
    if rgb or name not in ("AutoContrast", "ColorIncreasing"):  # (no-ops on full-range gray digits)
        assert (ours - x).abs().max() > 0.05  # the op changed the images


def test_crop_boxes_follow_scale_and_ratio():
    aug = _plain(crop_scale=0.3, ratio=(3 / 4, 4 / 3))
    theta = aug._geometry(4000, 28, 28, [], torch.Generator().manual_seed(1))
    sx, sy = theta[:, 0, 0], theta[:, 1, 1]  # crop width / image width, crop height / image height
    area = sx * sy
    assert area.min() >= 0.3 * 0.9 and area.max() <= 1.0 + 1e-6  # rounding to whole pixels
    assert (sx / sy).min() >= 0.75 * 0.85 and (sx / sy).max() <= 4 / 3 / 0.85
    assert area.std() > 0.1  # boxes do vary
    assert (theta[:, :, 2].abs() <= 1 - torch.stack([sx, sy], 1) + 1e-5).all()  # inside the image


def test_randaugment_draws_follow_the_policy():
    aug = BatchAugment(28, mean=(0.5,), std=(0.5,), recipe=Recipe(aa="rand-m9-mstd0.5-inc1"))
    n = 20000
    layers = aug._draw_ops(n, torch.Generator().manual_seed(0))
    assert len(layers) == 2 and len(aug.ops) == 15
    counts = torch.zeros(n, dtype=torch.int64)
    twice = torch.zeros(n, dtype=torch.bool)
    first = {name: chosen for name, (chosen, _) in layers[0].items()}
    for name, (chosen, level) in layers[1].items():
        counts += chosen
        if name in first:
            twice |= first[name] & chosen
        if name == "Rotate":
            degrees = level[chosen]
            assert degrees.abs().max() <= 30 and (degrees < 0).float().mean().sub(0.5).abs() < 0.1
            assert degrees.abs().mean().sub(27).abs() < 0.5  # magnitude 9 of 10 -> 27 degrees, std 0.5 -> 1.5
    applied = counts.float().mean()
    assert abs(applied - 0.5) < 0.02  # each layer's op is applied with probability 0.5
    # as timm's np.random.choice(ops, 2, replace=True): the same op in both layers for 1 image in 15, applied
    # twice in a quarter of those: 1/60 = 0.0167, binomial std over 20,000 images 0.0009
    assert abs(twice.float().mean() - 1 / 60) < 0.004


def test_random_erasing_rate_and_box_sizes(digits):
    x = torch.from_numpy(np.repeat(digits, 50, axis=0)).unsqueeze(1)
    out = _plain(reprob=0.25, mean=(0.5,), std=(0.5,))(x, 7)
    clean = (x.float() / 255 - 0.5) / 0.5
    erased = ((out - clean).abs() > 1e-3).flatten(1)
    rate = erased.any(dim=1).float().mean()
    assert abs(rate - 0.25) < 0.05
    area = erased.float().sum(dim=1)[erased.any(dim=1)] / (28 * 28)
    assert area.max() <= 1 / 3 + 0.03 and area.min() >= 0.01


def test_a_batch_is_a_function_of_its_seed(digits):
    recipe = Recipe(crop_scale=0.08, aa="rand-m9-mstd0.5-inc1", reprob=0.25)
    aug = BatchAugment(28, mean=(0.13,), std=(0.31,), recipe=recipe)
    x = torch.from_numpy(digits).unsqueeze(1)
    a, b, c = aug(x, 5), aug(x, 5), aug(x, 6)
    assert a.shape == (48, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert math.isfinite(a.sum().item())


def test_bad_input_is_refused(digits):
    with pytest.raises(ValueError, match="uint8"):
        _plain()(torch.rand(2, 1, 28, 28), 0)
    with pytest.raises(ValueError, match="RandAugment"):
        BatchAugment(28, mean=(0.5,), std=(0.5,), recipe=Recipe(aa="augmix-m5"))


def _rgb(digits: np.ndarray) -> torch.Tensor:
    """Colour images (B, 3, 28, 28) from the digits: three different channels."""
    return torch.from_numpy(np.stack([digits, np.roll(digits, 3, axis=0) // 2, 255 - digits], axis=1))


@pytest.mark.smoke
@pytest.mark.parametrize("kernel", [3, 7])
def test_three_augment_ops_match_torchvision(digits, kernel):
    """Each 3-Augment op against the per-image pipeline's torchvision step on the same image (and sigma): grayscale
    and solarize to the level; the blur to torchvision's float result (float32 sums in another order) and to its
    8-bit image within the half level it rounds by."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    from deit.data.batch_aug import THREE_AUGMENT, three_augment

    x = _rgb(digits[:12])
    choice = torch.arange(12) % 3
    sigma = torch.linspace(0.1, 2.0, 12)
    ours = three_augment(x.float() / 255, choice, sigma, kernel)
    for i in range(12):
        pil = Image.fromarray(x[i].permute(1, 2, 0).numpy(), "RGB")
        name = THREE_AUGMENT[int(choice[i])]
        if name == "grayscale":
            theirs = T.Grayscale(num_output_channels=3)(pil)
        elif name == "solarize":
            theirs = T.RandomSolarize(threshold=128, p=1.0)(pil)
        else:
            theirs = TF.gaussian_blur(pil, [kernel, kernel], [float(sigma[i])] * 2)
            exact = TF.gaussian_blur(x[i : i + 1].float() / 255, [kernel, kernel], [float(sigma[i])] * 2)[0]
            assert (ours[i] - exact).abs().max() < 1e-5
        expected = torch.from_numpy(np.array(theirs)).permute(2, 0, 1).float()
        tolerance = 0.5 + 1e-3 if name == "blur" else 0.0
        assert (ours[i] * 255 - expected).abs().max() <= tolerance, name
        assert (ours[i] * 255 - x[i].float()).abs().max() > 20, name  # the op did change the image


def test_three_augment_applies_one_op_per_image_each_a_third_of_the_time(digits):
    """BatchAugment with 3-Augment (the whole image, no jitter): every image comes out grayscaled, solarized or
    else blurred (at sigma near 0.1 a 3-tap blur leaves the image as it was), each for a third of the images
    (binomial std over 960 images 0.015: the bound is 4 of them), a different draw for another seed."""
    from deit.data.batch_aug import three_augment

    x = _rgb(np.repeat(digits[:24], 40, axis=0))
    n = len(x)
    aug = _plain(three_augment=True, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = aug(x, 3)
    plain = x.float() / 255
    gray = three_augment(plain, torch.zeros(n, dtype=torch.int64), torch.ones(n), 3)
    solarized = three_augment(plain, torch.ones(n, dtype=torch.int64), torch.ones(n), 3)
    near = lambda a, b: (a - b).flatten(1).abs().amax(dim=1) < 1e-5  # noqa: E731
    is_gray, is_solarized = near(out, gray), near(out, solarized)
    is_blurred = ~is_gray & ~is_solarized
    assert not (is_gray & is_solarized).any() and not near(out, plain)[is_gray | is_solarized].any()
    for share in (is_gray, is_solarized, is_blurred):
        assert abs(share.float().mean().item() - 1 / 3) < 4 * math.sqrt(2 / 9 / n)
    assert not torch.equal(near(aug(x, 4), gray), is_gray)


def test_three_augment_is_followed_by_colour_jitter(digits):
    """As in the per-image pipeline, 3-Augment keeps colour jitter (RandAugment turns it off)."""
    x = _rgb(digits)
    aug = _plain(three_augment=True, color_jitter=0.3, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert aug.jitter == 0.3 and aug.three_augment
    assert _plain(aa="rand-m9-mstd0.5-inc1", color_jitter=0.3).jitter == 0.0
    assert not torch.equal(aug(x, 0), _plain(three_augment=True, mean=(0.0,) * 3, std=(1.0,) * 3)(x, 0))


def test_simple_random_crop_of_images_in_memory_is_a_window_of_the_reflected_image(digits):
    """DeiT III's crop on a batch of images at the input size: each view is, to the bit, a window of the image
    padded by 4 px (reflected), mirrored or not, and the windows and mirrors vary."""
    x = torch.from_numpy(np.repeat(digits[:8], 10, axis=0)).unsqueeze(1)
    out = _plain(src=True, hflip=0.5, train_interpolation="bicubic")(x, 11)
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect") / 255
    found = set()
    for i in range(len(x)):
        windows = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(out[i], (lambda w: w.flip(-1) if flip else w)(padded[i, :, dy : dy + 28, dx : dx + 28]))
        ]
        assert windows, f"view {i} is no window of its padded image"
        found.update(windows)
    assert len({(dy, dx) for dy, dx, _ in found}) > 20 and {flip for *_, flip in found} == {False, True}


def test_simple_random_crop_resizes_images_in_memory_as_pillow():
    """Images of another size: the short side resized as Pillow does (torchvision's Resize), then the window."""
    from torchvision import transforms as T

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.integers(0, 256, (6, 3, 12, 20), dtype=np.uint8))
    out = _plain(src=True, train_interpolation="bicubic", mean=(0.0,) * 3, std=(1.0,) * 3)(x, 0)
    resized = [
        np.array(T.Resize(28, T.InterpolationMode.BICUBIC)(Image.fromarray(im.permute(1, 2, 0).numpy()))) for im in x
    ]
    for i, image in enumerate(resized):
        assert image.shape == (28, 46, 3)
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
        views = [padded[dy : dy + 28, dx : dx + 28] for dy in range(9) for dx in range(27)]
        ours = (out[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert any(np.array_equal(ours, view) for view in views)
