"""Teachers: a CNN (timm or torchvision architecture, or our small CNN for digits) or a DeiT, from local weights.

A teacher is always in eval mode and never receives gradients; under the training loop's autocast it runs in bf16.
Its class count must match the data's.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .models import create_model, read_checkpoint
from .models.fitting import check_finite
from .models.metadata import CNN_FAMILY
from .models.weights import Checkpoint, WeightsError


class SmallCNN(nn.Module):
    """A CNN for 28-32 px images (digits): three stages of two 3x3 conv-BN-ReLU, the first two followed by 2x2 max
    pooling, then global average pooling and a linear head. At 28 px the last stage is 7x7, the patch grid of
    `deit_pico_patch4_28`."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, width: int = 16):
        super().__init__()
        self.hparams = dict(num_classes=num_classes, in_chans=in_chans, width=width)
        layers, channels = [], in_chans
        for i, out in enumerate((width, width * 2, width * 4)):
            stage = [self._conv(channels, out), self._conv(out, out)]
            if i < 2:
                stage.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*stage))
            channels = out
        self.stages = nn.ModuleList(layers)
        self.fc = nn.Linear(channels, num_classes)

    @staticmethod
    def _conv(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x  # (B, C, H / 4, W / 4)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def create_cnn(name: str, *, num_classes: int, in_chans: int) -> nn.Module:
    """`small_cnn`, a timm architecture (`regnety_160`, `resnet50`, ...) or a torchvision one, randomly initialised."""
    import timm
    import torchvision

    if name == "small_cnn":
        model = SmallCNN(num_classes=num_classes, in_chans=in_chans)
    elif timm.is_model(name):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    elif name in torchvision.models.list_models():
        if in_chans != 3:
            raise ValueError(f"torchvision's {name} takes 3-channel images; use a timm architecture for {in_chans}")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        raise ValueError(f"unknown architecture {name!r}: not a deit model, small_cnn, nor a timm or torchvision model")
    model.model_name = name
    model.cnn_hparams = {"num_classes": num_classes, "in_chans": in_chans}  # what rebuilds it (`deit_config`)
    # channels-last weights make oneDNN and cuDNN convolve in that layout whatever the input's: faster for every
    # CNN measured (docs/distillation.md)
    return model.to(memory_format=torch.channels_last)


class Teacher(nn.Module):
    """Wraps a trained network: eval mode whatever the caller sets, no gradients.

    `input_size`: the image size the teacher was trained at, when its checkpoint says so. The student's views are
    resized to it (antialiased bilinear), so a teacher trained on 8 px digits sees 8 px digits when the student
    takes them at 28 px; None feeds the views as they come.
    """

    def __init__(self, model: nn.Module, name: str, num_classes: int, input_size: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.num_classes = num_classes
        self.input_size = input_size

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def resize_to(self, size: int) -> int | None:
        """The size views of `size` px are resized to for this teacher; None when it takes them as they come."""
        return self.input_size if self.input_size not in (None, size) else None

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The student's views at the teacher's own input size."""
        size = self.input_size
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.inputs(x))


def load_teacher(model_name: str, path: str | os.PathLike | None, *, num_classes: int, in_chans: int) -> Teacher:
    """A teacher from local weights: a checkpoint written by `deit train` (CNN or DeiT, architecture from the
    checkpoint), DeiT weights in any format `load_weights` reads, or a timm/torchvision state dict of `model_name`."""
    if path is None:
        raise ValueError(
            "distillation needs the teacher's weights: --teacher-path FILE (a checkpoint of `deit train`, or a "
            "timm/torchvision state dict of --teacher-model); nothing is downloaded"
        )
    ckpt = read_checkpoint(path)
    config = ckpt.config or {}
    input_size = (config.get("data") or {}).get("input_size")  # what `deit train` trained it at, when it did
    if config.get("family") == CNN_FAMILY:
        name, hparams = config["model"], config["hparams"]
        model = create_cnn(name, num_classes=hparams["num_classes"], in_chans=hparams["in_chans"])
        _load_cnn(model, ckpt, name)
        teacher_classes, teacher_chans = hparams["num_classes"], hparams["in_chans"]
    elif config or "pos_embed" in ckpt.state_dict:  # a DeiT / ViT teacher
        model = create_model(pretrained=ckpt)
        name = model.model_name or "deit"
        input_size = model.hparams["img_size"]  # its patch grid and position embeddings are made for this size
        teacher_classes, teacher_chans = model.num_classes, model.hparams["in_chans"]
    else:
        name = model_name
        model = create_cnn(model_name, num_classes=num_classes, in_chans=in_chans)
        teacher_classes = _head_classes(model, ckpt, num_classes)
        if teacher_classes == num_classes:  # else refused below, naming both counts
            _load_cnn(model, ckpt, model_name)
        teacher_chans = in_chans
    if teacher_classes != num_classes:
        raise ValueError(
            f"the teacher {path} predicts {teacher_classes} classes but the data has {num_classes}; "
            "distill from a teacher trained on these classes (train one with `deit train --model ...`)"
        )
    if teacher_chans != in_chans:
        raise ValueError(f"the teacher {path} takes {teacher_chans}-channel images but the data has {in_chans}")
    return Teacher(model, name, teacher_classes, input_size)


def _head_classes(model: nn.Module, ckpt: Checkpoint, num_classes: int) -> int:
    """The class count of a foreign CNN state dict: the rows of `model`'s classifier weight in it (`num_classes`,
    which `model` was built with, when it holds no such key: the load then reports what does not fit).

    `model` is a real one, built on the CPU: not a shape-only copy on the meta device, which fails for
    architectures whose constructor computes with tensors (timm 1.0.29's RegNet widths, built with torch.unique)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:  # torchvision: the last Linear layer
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    key = next(k for k, p in model.named_parameters() if p is head.weight)
    weight = ckpt.state_dict.get(key)
    return weight.shape[0] if weight is not None and weight.dim() > 0 else num_classes


def _load_cnn(model: nn.Module, ckpt: Checkpoint, name: str) -> None:
    check_finite(ckpt)
    expected = model.state_dict()
    sd = ckpt.state_dict
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        shown = (wrong + missing + unexpected)[:4]
        raise WeightsError(
            f"{ckpt.path} does not fit {name}: {len(wrong)} tensors differ in shape, {len(missing)} missing, "
            f"{len(unexpected)} unexpected (e.g. {', '.join(shown)}); check --teacher-model"
        )
    model.load_state_dict(sd, strict=True)
