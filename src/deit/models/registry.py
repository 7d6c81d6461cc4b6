"""Named DeiT configurations: a plain table, `MODELS`.

Sizes live here, not in the model class: a name is a patch size, a width, a depth and a head count, the way
timm registers `deit_small_patch16_224`. `factory.create_model` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    return {key: getattr(spec, key) for key in ("patch_size", "embed_dim", "depth", "num_heads", "img_size")}
