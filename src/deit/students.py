"""The model a run trains: a DeiT by registered name or a CNN (our small one, timm's or torchvision's), sized to
the data; and --finetune's starting weights."""

from __future__ import annotations

import logging

from torch import nn

from .models import MODELS, create_model, load_weights, read_checkpoint
from .teachers import create_cnn

log = logging.getLogger("deit")


def build_student(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    input_size: int | None,
    drop_path: float,
    native_size: int | None,
    layer_scale_init: float | None = None,
) -> tuple[nn.Module, int]:
    """A DeiT by registered name, else a CNN (our small one, timm's or torchvision's); and its input size."""
    if layer_scale_init is not None and (name not in MODELS or MODELS[name].layer_scale_init is None):
        raise ValueError(f"model.layer_scale_init: {name} has no LayerScale; a DeiT III (deit3_*) has")
    if name in MODELS:
        kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
        if layer_scale_init is not None:
            kwargs["layer_scale_init"] = layer_scale_init
        if input_size is not None:
            kwargs["img_size"] = input_size
        model = create_model(name, **kwargs)
        return model, model.hparams["img_size"]
    return create_cnn(name, num_classes=num_classes, in_chans=in_chans), input_size or native_size or 224


def finetune(model: nn.Module, path: str) -> None:
    """Start from the weights at `path`: a DeiT's pos_embed is resized and a head of another class count replaced;
    a CNN takes the tensors that fit (at least half of them)."""
    if hasattr(model, "pos_embed"):
        load_weights(model, path)
        return
    sd = read_checkpoint(path).state_dict
    own = model.state_dict()
    fitting = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < len(own) // 2:
        raise ValueError(f"{path} does not fit this model: only {len(fitting)} of {len(own)} tensors match")
    model.load_state_dict(fitting, strict=False)
    left = [k for k in own if k not in fitting]
    if left:
        log.warning(f"{path}: {len(left)} tensors left at their initialisation ({', '.join(left[:4])})")
