"""Named DeiT configurations: a plain table, `MODELS`.

Sizes live here, not in the model class: a name is a patch size, a width, a depth and a head count, the way
timm registers `deit_small_patch16_224`. `factory.create_model` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModelSpec:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    distilled: bool
    description: str
    layer_scale_init: float | None = None  # DeiT III
    no_embed_class: bool = False  # DeiT III
    drop_path_uniform: bool = False  # DeiT III


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
    MODELS[f"deit_nano{_d}_patch7_28"] = ModelSpec(7, 128, 6, 4, 28, _distilled, "CPU-sized, 28 px")

# DeiT III (Touvron et al. 2022, the official models_v2.py and timm's deit3_*): LayerScale (from 1e-4, as
# models_v2.py starts it), position embeddings for the patches only, every block dropped at the same rate. The
# sizes and resolutions of the official releases, and a distilled variant of each (a distillation token and
# head_dist, for distilling into a DeiT III, which the official code does not offer).
_DEIT3 = {
    # size: (patch, embed_dim, depth, heads, resolutions)
    "small": (16, 384, 12, 6, (224, 384)),
    "medium": (16, 512, 12, 8, (224,)),
    "base": (16, 768, 12, 12, (224, 384)),
    "large": (16, 1024, 24, 16, (224, 384)),
    "huge": (14, 1280, 32, 16, (224,)),
}
for _size, (_patch, _dim, _depth, _heads, _imgs) in _DEIT3.items():
    for _img in _imgs:
        for _distilled in (False, True):
            _name = f"deit3_{_size}{'_distilled' if _distilled else ''}_patch{_patch}_{_img}"
            _title = f"DeiT III-{_size[0].upper()}{_size[1:]}"
            MODELS[_name] = ModelSpec(_patch, _dim, _depth, _heads, _img, _distilled, _title, 1e-4, True, True)
for _distilled in (False, True):  # the CPU-sized student as a DeiT III
    _d = "_distilled" if _distilled else ""
    MODELS[f"deit3_pico{_d}_patch7_28"] = ModelSpec(
        7, 64, 4, 4, 28, _distilled, "DeiT III, CPU-sized", 1e-4, True, True
    )

# Keyword arguments a caller may override on top of a named configuration.
OVERRIDABLE = (
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "drop_path_rate",
    "layer_scale_init",
    "drop_path_uniform",
)


def list_models() -> list[str]:
    return list(MODELS)


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; `deit models` lists the names: {', '.join(MODELS)}")
    return MODELS[name]


def distilled_twins(name: str) -> tuple[str, str]:
    """A DeiT's name and its twin's, the plain one first: the same sizes, with and without a distillation token."""
    spec = model_spec(name)
    twin = next((n for n, s in MODELS.items() if s == replace(spec, distilled=not spec.distilled)), None)
    if twin is None:
        raise ValueError(f"{name} has no twin with{'out' if spec.distilled else ''} a distillation token")
    return (twin, name) if spec.distilled else (name, twin)


def model_kwargs(name: str) -> dict:
    spec = model_spec(name)
    keys = (
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "img_size",
        "layer_scale_init",
        "no_embed_class",
        "drop_path_uniform",
    )
    return {key: getattr(spec, key) for key in keys}
