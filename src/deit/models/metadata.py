"""What a weights file says about its model, checked before anything is built from it.

A deit config (the `deit_config` of a safetensors file or a training checkpoint, a saved folder's config.json) is
data read from a file; other tools' configs are read in `hf.py` and `timm_folder.py` with the checks here. Every
value is checked for its type and range, the config against the tensors it came with, and a model whose parameters
would not fit in memory is refused before it is built. A value that fails gets a `WeightsError` (a ValueError)
naming the file, the key, the value and the rule.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


class WeightsError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


# Bounds are generous (DeiT-B has embed_dim 768, depth 12) yet keep a hostile file from asking for absurd sizes.
HPARAM_BOUNDS: dict[str, tuple[type, float, float]] = {
    "img_size": (int, 1, 8192),
    "patch_size": (int, 1, 8192),
    "in_chans": (int, 1, 64),
    "num_classes": (int, 1, 1_000_000),
    "embed_dim": (int, 1, 16384),
    "depth": (int, 1, 1024),
    "num_heads": (int, 1, 16384),
    "mlp_ratio": (float, 1e-3, 64.0),
    "qkv_bias": (bool, 0, 1),
    "drop_path_rate": (float, 0.0, 0.999),
    "layer_scale_init": (float, 0.0, 100.0),  # DeiT III; null: no LayerScale
    "no_embed_class": (bool, 0, 1),  # DeiT III: position embeddings for the patches only
    "drop_path_uniform": (bool, 0, 1),  # DeiT III: every block dropped at drop_path_rate (else growing to it)
}
OPTIONAL_HPARAMS = {
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "drop_path_rate": 0.0,
    "layer_scale_init": None,
    "no_embed_class": False,
    "drop_path_uniform": False,
}
NULLABLE_HPARAMS = ("layer_scale_init",)
DEIT3_LAYER_SCALE_INIT = 1e-4
"""DeiT III's LayerScale start, as the official models_v2.py starts it (timm's deit3_* start at 1e-6): also taken
for weights that show LayerScale tensors but not where they started (which matters only when training from
scratch)."""
FAMILIES = ("deit", "cnn")  # a DeiT, or a CNN trained by `deit train` (a teacher)
CNN_FAMILY = "cnn"
CNN_HPARAMS = ("num_classes", "in_chans")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")
INTENSITIES = ("minmax", "full")
"""How images of more than 8 bits become the 8-bit images the transforms take (see `data/images.py`)."""
TOP_KEYS = {"format", "version", "family", "model", "distilled", "hparams", "data"}
DATA_KEYS = {"class_names", "mean", "std", "input_size", "eval_crop_ratio", "crop_mode", "interpolation", "intensity"}
CROP_MODES = ("center", "squash")
"""How the eval transform sizes an image before its centre crop (timm's `crop_mode`): `center` resizes the short
side to input_size / eval_crop_ratio, `squash` the whole image to that square (ViT's and DeiT's HF processors)."""


def check_value(where: str, key: str, value, kind: type, low: float, high: float):
    """`value` as `kind` within [low, high]; WeightsError naming `where`, the key and the rule otherwise."""
    if kind is bool:
        if not isinstance(value, bool):
            raise WeightsError(f"{where}: {key}={show_value(value)} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WeightsError(f"{where}: {key}={show_value(value)} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise WeightsError(f"{where}: {key}={show_value(value)} must be a finite number")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise WeightsError(f"{where}: {key}={show_value(value)} must be a whole number")
    if not low <= value <= high:  # exact for ints of any size
        raise WeightsError(f"{where}: {key}={show_value(value)} must be between {low:g} and {high:g}")
    return kind(value)


def check_hparams(hparams, where: str, *, required=tuple(HPARAM_BOUNDS)) -> dict:
    """A DeiT's constructor arguments, checked: the known keys only, each of its type and range, and the rules
    between them (patch size divides image size, head count divides width)."""
    if not isinstance(hparams, dict):
        raise WeightsError(f"{where}: hparams must be a mapping, not {show_value(hparams)}")
    unknown = sorted(set(hparams) - set(HPARAM_BOUNDS), key=str)
    if unknown:
        raise WeightsError(
            f"{where}: unknown hparams {', '.join(map(show_value, unknown[:4]))}; known: {', '.join(HPARAM_BOUNDS)}"
        )
    missing = [k for k in required if k not in hparams and k not in OPTIONAL_HPARAMS]
    if missing:
        raise WeightsError(f"{where}: hparams lack {', '.join(missing)}")
    out = {
        key: None if value is None and key in NULLABLE_HPARAMS else check_value(where, key, value, *HPARAM_BOUNDS[key])
        for key, value in hparams.items()
    }
    if "img_size" in out and "patch_size" in out and out["img_size"] % out["patch_size"]:
        raise WeightsError(f"{where}: img_size={out['img_size']} is not divisible by patch_size={out['patch_size']}")
    if "embed_dim" in out and "num_heads" in out and out["embed_dim"] % out["num_heads"]:
        raise WeightsError(f"{where}: embed_dim={out['embed_dim']} is not divisible by num_heads={out['num_heads']}")
    return out


def check_config(config, where: str, num_tensors: int | None = None) -> dict:
    """A deit config as read from a file: its keys, their types and ranges, and its `data` section."""
    if not isinstance(config, dict):
        raise WeightsError(f"{where}: its deit config must be a mapping, not {show_value(config)}")
    unknown = sorted(set(config) - TOP_KEYS, key=str)
    if unknown:
        raise WeightsError(f"{where}: unknown deit config keys {', '.join(map(show_value, unknown[:4]))}")
    family = config.get("family", "deit")
    if family not in FAMILIES:
        raise WeightsError(f"{where}: family={show_value(family)} must be {' or '.join(FAMILIES)}")
    name = config.get("model")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200 or not name.isprintable()):
        raise WeightsError(f"{where}: model={show_value(name)} must be a model name")
    if family == CNN_FAMILY and name is None:
        raise WeightsError(f"{where}: a CNN's config must name its architecture (model)")
    if not isinstance(config.get("distilled", False), bool):
        raise WeightsError(f"{where}: distilled={show_value(config['distilled'])} must be true or false")
    if "hparams" not in config:
        raise WeightsError(f"{where}: its deit config has no hparams")
    if family == CNN_FAMILY:
        hparams = config["hparams"]
        if not isinstance(hparams, dict) or set(hparams) != set(CNN_HPARAMS):
            raise WeightsError(f"{where}: a CNN's hparams must be exactly {', '.join(CNN_HPARAMS)}")
        hparams = {k: check_value(where, k, hparams[k], *HPARAM_BOUNDS[k]) for k in CNN_HPARAMS}
    else:
        hparams = check_hparams(config["hparams"], where)
    checked = {**config, "family": family, "hparams": hparams}
    if config.get("data") is not None:
        checked["data"] = check_data(config["data"], where, hparams)
    return checked


def check_data(data, where: str, hparams: dict) -> dict:
    """The `data` section: class names (one per class), normalisation (one value per channel), preprocessing."""
    if not isinstance(data, dict):
        raise WeightsError(f"{where}: its data config must be a mapping, not {show_value(data)}")
    unknown = sorted(set(data) - DATA_KEYS, key=str)
    if unknown:
        raise WeightsError(f"{where}: unknown data config keys {', '.join(map(show_value, unknown[:4]))}")
    out = {key: value for key, value in data.items() if value is not None}  # null: not given
    names = data.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) and len(n) <= 1000 for n in names):
            raise WeightsError(f"{where}: class_names must be a list of names (strings)")
        if len(names) != hparams["num_classes"]:
            raise WeightsError(f"{where}: {len(names)} class names for {hparams['num_classes']} classes")
    for key in ("mean", "std"):
        values = data.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != hparams["in_chans"]:
            raise WeightsError(f"{where}: {key} must list one value per input channel ({hparams['in_chans']})")
        low = 1e-6 if key == "std" else -1e3
        out[key] = [check_value(where, key, v, float, low, 1e3) for v in values]
    if data.get("input_size") is not None:
        out["input_size"] = check_value(where, "input_size", data["input_size"], *HPARAM_BOUNDS["img_size"])
    if data.get("eval_crop_ratio") is not None:
        out["eval_crop_ratio"] = check_value(where, "eval_crop_ratio", data["eval_crop_ratio"], float, 1e-3, 1.0)
    for key, allowed in (("interpolation", INTERPOLATIONS), ("intensity", INTENSITIES), ("crop_mode", CROP_MODES)):
        if data.get(key) is not None and data[key] not in allowed:
            raise WeightsError(f"{where}: {key}={show_value(data[key])} must be one of {', '.join(allowed)}")
    return out


def names_list(value, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(n, str) and len(n) <= 1000 for n in value):
        raise WeightsError(f"{where}: {key} must be a list of names (strings)")
    return value


def channel_values(value, where: str, key: str) -> list:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= HPARAM_BOUNDS["in_chans"][2]:
        raise WeightsError(f"{where}: {key}={show_value(value)} must list one value per input channel")
    return list(value)


def check_input_size(data: dict, sd: dict[str, torch.Tensor], where: str) -> None:
    """The size another tool's preprocessing gives images must be the one the tensors take (their position
    embedding's grid): transformers and timm would feed the model that size, and it would not run."""
    size, native = data.get("input_size"), tensor_hparams(sd, where)["img_size"]
    if size is not None and size != native:
        raise WeightsError(
            f"{where}: its preprocessing gives {show_value(size)} px images, but the model takes {native} px; "
            "write the model's size there"
        )


def tensor_hparams(sd: dict[str, torch.Tensor], where: str) -> dict:
    """What the tensors of a DeiT/ViT state dict say of its architecture (all but the head count, which they do
    not show); WeightsError when they are not a DeiT's."""
    needed = (
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.fc1.weight",
    )
    if any(k not in sd for k in needed):
        raise WeightsError(
            f"{where} is not a DeiT/ViT checkpoint (it lacks {', '.join(k for k in needed if k not in sd)}); "
            "give the model name if it is one saved under other key names"
        )
    proj, cls, pos, fc1 = sd["patch_embed.proj.weight"], sd["cls_token"], sd["pos_embed"], sd["blocks.0.mlp.fc1.weight"]
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3] or cls.dim() != 3 or pos.dim() != 3 or fc1.dim() != 2:
        raise WeightsError(
            f"{where}: its patch embedding, tokens or MLP have the wrong number of dimensions for a DeiT"
        )
    embed_dim = cls.shape[-1]
    if proj.shape[0] != embed_dim or pos.shape[-1] != embed_dim or fc1.shape[1] != embed_dim or embed_dim == 0:
        raise WeightsError(
            f"{where}: its tensors disagree on the width (cls_token {tuple(cls.shape)}, patch "
            f"embedding {tuple(proj.shape)}, pos_embed {tuple(pos.shape)})"
        )
    indices = set()
    for key in sd:
        if key.startswith("blocks."):
            index = key.split(".")[1]
            if not index.isdigit():
                raise WeightsError(f"{where}: {key} is not a block parameter")
            indices.add(int(index))
    depth = len(indices)
    if indices != set(range(depth)):
        raise WeightsError(
            f"{where}: its blocks are numbered {min(indices)}..{max(indices)} with gaps ({depth} blocks)"
        )
    distilled = "dist_token" in sd
    patch_size = proj.shape[-1]
    prefix = 2 if distilled else 1
    # DeiT III's pos_embed covers the patches alone: a square count of positions, where DeiT's is a square plus
    # its prefix tokens
    no_embed_class = math.isqrt(pos.shape[1]) ** 2 == pos.shape[1] and pos.shape[1] > 0
    grid = math.isqrt(max(pos.shape[1] - (0 if no_embed_class else prefix), 0))
    out = dict(
        img_size=grid * patch_size,
        patch_size=patch_size,
        in_chans=proj.shape[1],
        embed_dim=embed_dim,
        depth=depth,
        mlp_ratio=fc1.shape[0] / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        layer_scale_init=DEIT3_LAYER_SCALE_INIT if "blocks.0.ls1.gamma" in sd else None,
        no_embed_class=no_embed_class,
    )
    if "head.weight" in sd and sd["head.weight"].dim() == 2:
        out["num_classes"] = sd["head.weight"].shape[0]
    return out


def check_matches_tensors(config: dict, sd: dict[str, torch.Tensor], where: str) -> None:
    """A DeiT config must describe the tensors it came with: a file whose config claims another model is refused
    before that model is built."""
    if config["family"] != "deit":
        return
    seen = tensor_hparams(sd, where)
    if bool(config.get("distilled")) != ("dist_token" in sd):
        raise WeightsError(
            f"{where}: its config says distilled={config.get('distilled')}, its tensors "
            f"{'have' if 'dist_token' in sd else 'lack'} a distillation token; the file is inconsistent"
        )
    hp = config["hparams"]
    for key, value in seen.items():
        claimed = hp.get(key, OPTIONAL_HPARAMS.get(key))
        if key == "mlp_ratio":
            same = claimed is not None and int(hp["embed_dim"] * claimed) == sd["blocks.0.mlp.fc1.weight"].shape[0]
        elif key == "layer_scale_init":  # the tensors show whether there is LayerScale, not where it started
            same = (claimed is None) == (value is None)
        else:
            same = claimed == value
        if not same:
            raise WeightsError(
                f"{where}: its config says {key}={show_value(claimed)} but its tensors have {show_value(value)}; "
                "the file is inconsistent (save the model again)"
            )


def parameter_count(kwargs: dict, distilled: bool) -> int:
    """The parameters of the DeiT `VisionTransformer(**kwargs)` would have, counted without building it."""
    D, L = kwargs.get("embed_dim", 768), kwargs.get("depth", 12)
    p, C = kwargs.get("patch_size", 16), kwargs.get("in_chans", 3)
    K, prefix = kwargs.get("num_classes", 1000), 2 if distilled else 1
    N = (kwargs.get("img_size", 224) // p) ** 2
    H = int(D * kwargs.get("mlp_ratio", 4.0))
    qkv_bias = kwargs.get("qkv_bias", True)
    block = 2 * D + 3 * D * D + (3 * D if qkv_bias else 0) + D * D + D + 2 * D + D * H + H + H * D + D
    block += 2 * D if kwargs.get("layer_scale_init") is not None else 0
    positions = N + (0 if kwargs.get("no_embed_class") else prefix)
    return D * C * p * p + D + prefix * D + positions * D + L * block + 2 * D + prefix * (D * K + K)


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the machine's available memory, and a container's limit."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:  # cgroup v2: a container's limit and what it uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    limits += _rlimits_left()
    if not limits:
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return max(min(limits), 0)


def _rlimits_left() -> list[int]:
    """What this process's own limits leave (`ulimit -v`: address space; `ulimit -d`: heap), in bytes."""
    import resource

    left = []
    for limit, field in ((resource.RLIMIT_AS, "VmSize:"), (resource.RLIMIT_DATA, "VmData:")):
        soft = resource.getrlimit(limit)[0]
        if soft == resource.RLIM_INFINITY:
            continue
        try:
            status = Path("/proc/self/status").read_text().splitlines()
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))
        except (OSError, ValueError, StopIteration):
            used = 0
        left.append(soft - used)
    return left


def check_fits(kwargs: dict, distilled: bool, where: str) -> None:
    """Refuse, before building it, a model whose float32 weights alone would not fit in the memory left."""
    count = parameter_count(kwargs, distilled)
    free = available_memory()
    if free is not None and 4 * count > free:
        raise WeightsError(
            f"{where}: the model would have {count / 1e6:,.1f}M parameters ({4 * count / 2**30:,.1f} GB "
            f"in float32), more than the {free / 2**30:.1f} GB of memory available"
        )


def show_value(value) -> str:
    """A value as an error message quotes it: its repr, cut to 60 characters (a hostile file's value can be long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
