"""`create_model`: a DeiT by registered name and/or from local weights."""

from __future__ import annotations

import os

from . import metadata
from .fitting import load_state
from .registry import MODELS, OVERRIDABLE, model_kwargs
from .vit import DistilledVisionTransformer, VisionTransformer
from .weights import Checkpoint, checkpoint_sizes, infer_architecture, read_checkpoint


def create_model(
    name: str | None = None,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    pretrained: str | os.PathLike | Checkpoint | None = None,
    **overrides,
) -> VisionTransformer:
    """Build a DeiT model by name, optionally loading local weights.

    `pretrained` is a local path in any format `load_weights` reads (safetensors, official DeiT `.pth`, timm,
    HF transformers, a deit checkpoint or folder), or a `Checkpoint` already read. With `pretrained` and no `name`,
    the architecture comes from the checkpoint (its saved config, or its tensor shapes). A value not given comes
    from the checkpoint (class count and input channels; a deit checkpoint also gives its image size), else the
    named configuration, else num_classes=1000 and in_chans=3. The weights then load as `load_weights` does
    (pos_embed resized, a head of another class count dropped).
    """
    source = pretrained
    if pretrained is not None and not isinstance(pretrained, Checkpoint):
        source = read_checkpoint(pretrained)
    if name is None:
        if source is None:
            raise ValueError("create_model needs a model name, or pretrained=PATH to take the architecture from")
        name, kwargs, distilled = infer_architecture(source)
    else:
        kwargs, distilled = model_kwargs(name), MODELS[name].distilled
        if source is not None:  # a fine-tuned checkpoint keeps its class count and input channels
            kwargs.update(checkpoint_sizes(source))
    for key, value in (("num_classes", num_classes), ("img_size", img_size), ("in_chans", in_chans)):
        if value is not None:
            kwargs[key] = value
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise ValueError(f"unknown model option {key}={value!r}; options are: {', '.join(OVERRIDABLE)}")
        kwargs[key] = value
    # the sizes are checked, and the parameters counted, before anything is allocated
    where = str(source.path) if source is not None else f"model {name}"
    kwargs = metadata.check_hparams(kwargs, where, required=())
    metadata.check_fits(kwargs, distilled, where)
    model = (DistilledVisionTransformer if distilled else VisionTransformer)(**kwargs)
    model.model_name = name
    if source is not None:
        load_state(model, source)
        # class names and preprocessing saved at training time (or in another tool's folder) travel with the weights
        model.data_config = (source.config or {}).get("data")
        if model.data_config is None and source.data:
            model.data_config = metadata.check_data(source.data, str(source.path), model.hparams)
    return model
