"""Named DeiT configurations and `create_model`.

Sizes live here, not in the model class: a name is a patch size, a width, a depth and a head count, the way
timm registers `deit_small_patch16_224`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import metadata
from .vit import DistilledVisionTransformer, VisionTransformer


@dataclass(frozen=True)
class ModelSpec:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    distilled: bool
    description: str


_SIZES = {
    # size: (embed_dim, heads), depth 12, patch 16: the paper's Table 1
    "tiny": (192, 3),
    "small": (384, 6),
    "base": (768, 12),
}

MODELS: dict[str, ModelSpec] = {}

for _size, (_dim, _heads) in _SIZES.items():
    for _img in (224, 384):
        if _img == 384 and _size != "base":
            continue  # the paper's 384 px models are DeiT-B only
        for _distilled in (False, True):
            _name = f"deit_{_size}{'_distilled' if _distilled else ''}_patch16_{_img}"
            MODELS[_name] = ModelSpec(16, _dim, 12, _heads, _img, _distilled, f"DeiT-{_size[0].upper()}{_size[1:]}")

# CPU-sized models for 28-32 px images (MNIST digits, CIFAR): 4 px patches give a 7x7 or 8x8 grid; 7 px patches a
# 4x4 grid, three times cheaper and quicker to learn from a few thousand images (the demo's student).
for _distilled in (False, True):
    _d = "_distilled" if _distilled else ""
    MODELS[f"deit_pico{_d}_patch4_28"] = ModelSpec(4, 64, 4, 4, 28, _distilled, "CPU-sized, 28 px")
    MODELS[f"deit_pico{_d}_patch7_28"] = ModelSpec(7, 64, 4, 4, 28, _distilled, "CPU-sized, 28 px")
    MODELS[f"deit_nano{_d}_patch4_32"] = ModelSpec(4, 128, 6, 4, 32, _distilled, "CPU-sized, 32 px")

# Keyword arguments a caller may override on top of a named configuration.
OVERRIDABLE = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "drop_path_rate")


def list_models() -> list[str]:
    return list(MODELS)


def model_kwargs(name: str) -> dict:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; `deit models` lists the names: {', '.join(MODELS)}")
    spec = MODELS[name]
    return dict(
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        img_size=spec.img_size,
    )


def build(kwargs: dict, distilled: bool) -> VisionTransformer:
    return (DistilledVisionTransformer if distilled else VisionTransformer)(**kwargs)


def create_model(
    name: str | None = None,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    pretrained: str | Path | None = None,
    **overrides,
) -> VisionTransformer:
    """Build a DeiT model by name, optionally loading local weights.

    `pretrained` is a local path in any format `load_weights` reads (safetensors, official DeiT `.pth`, timm,
    HF transformers, a deit checkpoint or folder). With `pretrained` and no `name`, the architecture comes from
    the checkpoint (its saved config, or its tensor shapes). A value not given comes from the checkpoint (class
    count and input channels; a deit checkpoint also gives its image size), else the named configuration, else
    num_classes=1000 and in_chans=3. The weights then load as `load_weights` does (pos_embed resized, a head of
    another class count dropped).
    """
    from . import weights  # weights imports this module

    source = weights.read_checkpoint(pretrained) if pretrained is not None else None
    if name is None:
        if source is None:
            raise ValueError("create_model needs a model name, or pretrained=PATH to take the architecture from")
        name, kwargs, distilled = weights.infer_architecture(source)
    else:
        kwargs, distilled = model_kwargs(name), MODELS[name].distilled
        if source is not None:  # a fine-tuned checkpoint keeps its class count and input channels
            kwargs.update(weights.checkpoint_io(source))
    for key, value in (("num_classes", num_classes), ("img_size", img_size), ("in_chans", in_chans)):
        if value is not None:
            kwargs[key] = value
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise ValueError(f"unknown model option {key}={value!r}; options are: {', '.join(OVERRIDABLE)}")
        kwargs[key] = value
    # the sizes are checked, and the parameters counted, before anything is allocated
    where = str(pretrained) if pretrained is not None else f"model {name}"
    kwargs = metadata.check_hparams(kwargs, where, required=())
    metadata.check_fits(kwargs, distilled, where)
    model = build(kwargs, distilled)
    model.model_name = name
    if source is not None:
        weights.load_state(model, source)
        # class names and preprocessing saved at training time travel with the weights
        model.data_config = (source.config or {}).get("data")
    return model
