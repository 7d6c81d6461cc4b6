"""A trained model's inputs, prepared as its training data was evaluated.

The preparation comes from the weights (`model.data_config`, saved by `deit train`): input size, eval crop ratio,
interpolation, mean and std, how images of more than 8 bits are scaled, class names. Weights without it (official,
timm, HF) get ImageNet's preprocessing and class indices as names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from .builtin_sets import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD
from .images import read_image
from .transforms import eval_transform


@dataclass
class Preprocessing:
    transform: object  # PIL image -> normalised tensor
    class_names: list[str]
    mode: str  # the PIL mode the model reads: "L" or "RGB"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    intensity: str = "minmax"  # how images of more than 8 bits become 8-bit (data/images.py)
    crop_ratio: float = 0.875  # the short side resized to size / crop_ratio, then the centre crop
    interpolation: str = "bicubic"
    crop_mode: str = "center"  # "squash": the whole image resized to that square, then the centre crop

    def read(self, path: Path | BinaryIO, name: str | None = None) -> torch.Tensor:
        """An image file (a path, or an open binary file called `name`) as the model's input; ValueError naming it
        when it is not a readable image."""
        image = read_image(path, self.mode, self.intensity, name=name)
        try:
            return self.transform(image)
        except Exception as e:  # e.g. an image of zero width
            raise ValueError(f"{name or path}: cannot be prepared for the model ({type(e).__name__}: {e})") from None


def preprocessing(model: torch.nn.Module) -> Preprocessing:
    """The eval transform of the model's training data, its class names and normalisation."""
    hp = model.hparams
    data = getattr(model, "data_config", None) or {}
    gray = hp["in_chans"] == 1
    mean = tuple(data.get("mean") or (GRAY_MEAN if gray else IMAGENET_MEAN))
    std = tuple(data.get("std") or (GRAY_STD if gray else IMAGENET_STD))
    interpolation = data.get("interpolation", "bicubic")
    crop_ratio = data.get("eval_crop_ratio", 0.875)
    crop_mode = data.get("crop_mode", "center")
    transform = eval_transform(
        hp["img_size"], mean=mean, std=std, interpolation=interpolation, crop_ratio=crop_ratio, crop_mode=crop_mode
    )
    names = list(data.get("class_names") or [str(i) for i in range(model.num_classes)])
    mode = "L" if gray else "RGB"
    return Preprocessing(
        transform, names, mode, mean, std, data.get("intensity") or "minmax", crop_ratio, interpolation, crop_mode
    )
