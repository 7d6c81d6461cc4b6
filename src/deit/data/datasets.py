"""A data set's split by name, as a torch Dataset: ImageFolder trees (the ImageNet layout), WebDataset shards, or a
built-in set held in memory (its files: builtin_sets.py).

Every data set yields (image, target, skipped). In a training split, `skipped` counts the unreadable files passed
over to produce this sample (always 0 but for folders), so a training loop can report them without stopping. An
evaluation split never stands one image in for another: an unreadable file yields (None, target, 1), which
`sampling.collate_readable` leaves out of its batch and counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import builtin_sets
from .builtin_sets import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD
from .images import IMAGE_EXTENSIONS, LazyJpeg, read_image, walk_files

log = logging.getLogger("deit")

UNLABELLED = -1
"""The target of a training image whose label is hidden (`labels_per_class` with `unlabelled`)."""


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
        self.reader = read_image  # the device input path reads bytes instead (`device_views.read_encoded`)
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
                image = self.reader(path, self.mode, self.intensity)
                if isinstance(image, LazyJpeg):  # decoded by its crop (`images.read_lazy`): a damaged one fails there
                    image = self.transform(image)
                    return image, target, skipped
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


def dataset_defaults(data_set: str) -> dict:
    """Dotted config defaults suited to a data set (applied to settings the user did not give)."""
    return builtin_sets.defaults(canonical_name(data_set))


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
        dataset, info = _folder_split(name, data_path, train, grayscale, intensity)
    else:
        split = builtin_sets.load(name, data_path, train)
        dataset = ArrayDataset(split.images, split.targets)
        in_chans = 1 if split.images.ndim == 3 else 3
        info = DataInfo(
            len(split.class_names), in_chans, split.class_names, split.mean, split.std, split.images.shape[1]
        )
    if train and labels_per_class is not None:
        labelled = first_per_class(dataset.targets, labels_per_class)
        if unlabelled:
            dataset.hide_labels(labelled)
        else:
            dataset.keep(labelled)
    return dataset, info


def _folder_split(
    name: str, data_path: str | None, train: bool, grayscale: bool, intensity: str
) -> tuple[ImageFolderDataset, DataInfo]:
    """The train/ or val/ split of a folder of class folders (the ImageNet layout)."""
    if data_path is None:
        raise ValueError(f"--data-set {name} needs --data-path: a folder with train/ and val/ class folders")
    root = Path(data_path)
    if not root.is_dir():
        raise ValueError(f"data path not found: {root}")
    split = root / ("train" if train else "val")
    if not split.is_dir():
        raise ValueError(f"{root} has no {split.name}/ folder; expected {root}/train/<class>/ and {root}/val/<class>/")
    # the validation split takes the training split's classes; alone (to evaluate a model), its own
    classes = None if train or not (root / "train").is_dir() else _class_folders(root / "train")
    dataset = ImageFolderDataset(split, grayscale, classes, substitute=train, intensity=intensity)
    if train and len(dataset.classes) < 2:
        raise ValueError(
            f"{split} has one class folder ({dataset.classes[0]}); a classifier needs at least two "
            "classes: add a folder of images for each class"
        )
    mean, std = (GRAY_MEAN, GRAY_STD) if grayscale else (IMAGENET_MEAN, IMAGENET_STD)
    return dataset, DataInfo(len(dataset.classes), 1 if grayscale else 3, dataset.classes, mean, std)


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
