"""Weights in and out: read any common DeiT checkpoint, tell its architecture, save and convert (fitting one to a
model: fitting.py).

Formats read (detected from the content, not the file name):
- safetensors files, and folders holding `model.safetensors` or `pytorch_model.bin` (+ `config.json`);
- official DeiT `.pth` (`{'model': state_dict}`), plain timm state dicts, deit training checkpoints;
- HF transformers saves: `DeiTForImageClassificationWithTeacher` (distilled DeiT) and `ViTForImageClassification`
  (how HF stores plain DeiT), separate q/k/v merged into our fused qkv (`hf.py`), and timm folders
  (`timm_folder.py`), each with its preprocessing.

Pickled files are read with `torch.load(weights_only=True)` only: a file whose unpickling would run code is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import JSONFileError, atomic_write, read_json
from ..messages import first_line
from . import hf, metadata, timm_folder
from .metadata import CNN_FAMILY, WeightsError
from .registry import MODELS
from .vit import VisionTransformer

log = logging.getLogger("deit")

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"  # an HF folder's image processor
WEIGHTS_FILE = "model.safetensors"
CONFIG_KEY = "deit_config"  # where a deit config lives in safetensors metadata and in training checkpoints
LAYOUTS = ("deit", "timm", "hf")


@dataclass
class Checkpoint:
    """A state dict in our key names, with what its file says about the model."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: dict | None = None  # a deit config (model name, hparams), when the file carries one
    hf_config: dict | None = None  # an HF config.json, when the file came with one
    # class names and preprocessing from another tool's folder (timm's config.json, HF's id2label and
    # preprocessor_config.json), in our data config's keys; checked against the model when one is built
    data: dict | None = None
    num_heads: int | None = None  # as a timm folder's model_args give it
    ignored: list[str] = field(default_factory=list)  # keys with no counterpart in a DeiT classifier


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file or folder into a `Checkpoint` (our key names), without building a model."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights not found: {path}; give a .safetensors or .pth file, or a saved model folder")
    config_json = None
    file = path
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            config_json = _read_json(path / CONFIG_FILE)
        # a saved model (ours or HF's), else the checkpoint of a `deit train` run
        names = (WEIGHTS_FILE, "pytorch_model.bin", "checkpoint.pth")
        found = [path / name for name in names if (path / name).is_file()]
        if not found:
            raise WeightsError(f"{path} is a folder without {', '.join(names)}; give the weights file itself")
        file = found[0]
    if file.suffix == ".onnx":
        raise WeightsError(
            f"{file} is an ONNX file: deit serve --weights {file.name} serves it; this command reads PyTorch weights "
            "(the checkpoint it was exported from)"
        )
    tensors, config = _read_file(file)
    if config is None and isinstance(config_json, dict) and config_json.get("format") == "deit":
        config = config_json
    hf_config = data = num_heads = None
    where = str(path / CONFIG_FILE)
    if config is None and isinstance(config_json, dict) and "model_type" in config_json:
        hf_config = hf.check_config(config_json, where)
        processor = path / PREPROCESSOR_FILE
        data = hf.read_processor(hf_config, _read_json(processor) if processor.is_file() else None, where)
    elif config is None and isinstance(config_json, dict) and "pretrained_cfg" in config_json:
        data, num_heads = timm_folder.read_config(config_json, where)
    state_dict, ignored = _to_native(tensors)
    if hf_config is not None:
        hf.check_matches(hf_config, state_dict, where)
    elif data is not None:
        timm_folder.check_matches(config_json, state_dict, where)
    if data is not None:
        metadata.check_input_size(data, state_dict, str(path / PREPROCESSOR_FILE) if hf_config else where)
    if config is not None:
        config = metadata.check_config(config, str(path))
        metadata.check_matches_tensors(config, state_dict, str(path))
    return Checkpoint(path, state_dict, config, hf_config, data=data, num_heads=num_heads, ignored=ignored)


MAX_CONFIG_BYTES = 64 * 2**20  # a config.json: sizes, and up to a million class names


def _read_json(path: Path):
    try:
        return read_json(path, MAX_CONFIG_BYTES)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{e if isinstance(e, JSONFileError) else first_line(e)}; save the model again") from None


def _read_file(file: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors and the deit config (if any) of a safetensors or torch file."""
    with open(file, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118 (not a dict)
        except Exception as e:
            raise WeightsError(f"cannot read {file} as safetensors ({first_line(e)}); is the file complete?") from None
        if not meta.get(CONFIG_KEY):
            return tensors, None
        try:
            return tensors, json.loads(meta[CONFIG_KEY])
        except (ValueError, RecursionError) as e:
            raise WeightsError(f"{file}: its {CONFIG_KEY} metadata is not valid JSON ({first_line(e)})") from None
    return _unwrap(torch_load(file), file)


def torch_load(file: Path):
    """`torch.load(weights_only=True)`: tensors and plain data only; WeightsError naming the file otherwise."""
    try:
        with _allow_namespace():
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():  # not a pickle at all, or a damaged one
            raise WeightsError(f"cannot read {file} as a PyTorch checkpoint: it is not one, or it is damaged") from None
        raise WeightsError(
            f"refusing to load {file}: it holds pickled Python objects besides tensors, and unpickling them could "
            "run code; if you trust it, re-save its state dict (or as safetensors) and load that"
        ) from None
    except MemoryError:
        raise WeightsError(f"cannot read {file}: it does not fit in memory") from None
    except Exception as e:
        raise WeightsError(
            f"cannot read {file} as a PyTorch checkpoint ({first_line(e)}); is it a complete .pth/.safetensors file?"
        ) from None


def _allow_namespace():
    """Official DeiT training checkpoints hold their `args` as an argparse.Namespace: plain data, safe to rebuild."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def _unwrap(obj, file: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    config = None
    if isinstance(obj, dict):
        config = obj.get(CONFIG_KEY)
        for key in ("model", "state_dict"):  # official DeiT and deit training checkpoints; other trainers
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors or not all(isinstance(k, str) for k in tensors):
        raise WeightsError(f"{file} holds no named tensors: it is not a model checkpoint")
    return tensors, config


# ---------------------------------------------------------------------------------------------------------------
# Key names: ours (= timm's), the official DeiT III's, and HF transformers' (models/hf.py)

# The official DeiT III models (models_v2.py) name a block's LayerScale `gamma_1` and `gamma_2`; timm and we
# name it `ls1.gamma` and `ls2.gamma`
_OFFICIAL_LAYER_SCALE = re.compile(r"^blocks\.(\d+)\.gamma_([12])$")


def _to_native(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our key names from any supported layout (ours and timm's are the same; HF's are mapped): (state_dict,
    ignored keys)."""
    sd = {_OFFICIAL_LAYER_SCALE.sub(r"blocks.\1.ls\2.gamma", _strip_wrappers(k)): v for k, v in sd.items()}
    prefix = hf.layout_prefix(sd)
    return (sd, []) if prefix is None else hf.from_hf(sd, prefix)


def _strip_wrappers(key: str) -> str:
    # DDP saves keys under `module.`, torch.compile under `_orig_mod.`: neither is part of the model.
    while key.startswith(("module.", "_orig_mod.")):
        key = key.split(".", 1)[1]
    return key


# ---------------------------------------------------------------------------------------------------------------
# What a checkpoint says about its model


def infer_architecture(ckpt: Checkpoint) -> tuple[str | None, dict, bool]:
    """(registered name or None, constructor kwargs, distilled) of the model a checkpoint was made for."""
    if ckpt.config:
        if ckpt.config.get("family", "deit") != "deit":
            raise WeightsError(
                f"{ckpt.path} holds a {ckpt.config.get('model')} CNN, not a DeiT; use it as a teacher (--teacher-path)"
            )
        return ckpt.config.get("model"), dict(ckpt.config["hparams"]), bool(ckpt.config.get("distilled"))
    kwargs = metadata.tensor_hparams(ckpt.state_dict, str(ckpt.path))
    distilled = "dist_token" in ckpt.state_dict
    patch_size, embed_dim, depth = kwargs["patch_size"], kwargs["embed_dim"], kwargs["depth"]
    # The head count is not visible in the tensors: take it from HF's config, a registered size, or ViT's 64/head.
    deit3 = kwargs["no_embed_class"], kwargs["layer_scale_init"] is not None
    same = [
        (name, spec)
        for name, spec in MODELS.items()
        if (spec.patch_size, spec.embed_dim, spec.depth, spec.distilled) == (patch_size, embed_dim, depth, distilled)
        and (spec.no_embed_class, spec.layer_scale_init is not None) == deit3
    ]
    if ckpt.hf_config and "num_attention_heads" in ckpt.hf_config:
        kwargs["num_heads"] = int(ckpt.hf_config["num_attention_heads"])
    elif ckpt.num_heads:
        kwargs["num_heads"] = ckpt.num_heads
    elif same:
        kwargs["num_heads"] = same[0][1].num_heads
    elif embed_dim % 64 == 0:
        kwargs["num_heads"] = embed_dim // 64
    else:
        raise WeightsError(f"cannot tell the head count of {ckpt.path}; give the model name")
    same = [(n, s) for n, s in same if s.num_heads == kwargs["num_heads"]]
    exact = [n for n, s in same if s.img_size == kwargs["img_size"]]
    name = exact[0] if exact else same[0][0] if same else None
    if name is not None:  # what the tensors cannot show: how the model was built to train
        spec = MODELS[name]
        kwargs["drop_path_uniform"] = spec.drop_path_uniform
        if spec.layer_scale_init is not None and kwargs["layer_scale_init"] is not None:
            kwargs["layer_scale_init"] = spec.layer_scale_init
    return name, kwargs, distilled


def checkpoint_sizes(ckpt: Checkpoint) -> dict:
    """The class count and input channels a checkpoint was trained with (and image size, from a deit config)."""
    sd, out = ckpt.state_dict, {}
    if "head.weight" in sd:
        out["num_classes"] = sd["head.weight"].shape[0]
    if "patch_embed.proj.weight" in sd:
        out["in_chans"] = sd["patch_embed.proj.weight"].shape[1]
    if ckpt.config and "img_size" in ckpt.config.get("hparams", {}):
        out["img_size"] = ckpt.config["hparams"]["img_size"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Writing


def deit_config(model: torch.nn.Module, data: dict | None = None) -> dict:
    """What rebuilds `model` and prepares its inputs: saved with its weights (safetensors metadata, config.json) and
    in training checkpoints, under CONFIG_KEY. A DeiT, or a CNN of `teachers.create_cnn`; `data` (class names and
    preprocessing) defaults to what the model was loaded with."""
    if isinstance(model, VisionTransformer):
        config = {
            "format": "deit",
            "version": 1,
            "family": "deit",
            "model": getattr(model, "model_name", None),
            "distilled": model.distilled,
            "hparams": dict(model.hparams),
        }
        data = data or model.data_config
    else:
        hparams = {k: model.cnn_hparams[k] for k in metadata.CNN_HPARAMS}
        config = {"format": "deit", "family": CNN_FAMILY, "model": model.model_name, "hparams": hparams}
    if data:
        config["data"] = dict(data)
    return config


def cpu_state_dict(model: VisionTransformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def write_safetensors(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_json(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def save_weights(model: VisionTransformer, path: str | os.PathLike) -> Path:
    """Save as safetensors with the model's config: a `.safetensors` file (config in its metadata), or a folder
    holding `model.safetensors` and `config.json`. `create_model(pretrained=path)` rebuilds the model from either."""
    path = Path(path)
    config = deit_config(model)
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(cpu_state_dict(model), path, {"format": "pt", CONFIG_KEY: json.dumps(config)})
    else:
        path.mkdir(parents=True, exist_ok=True)
        write_safetensors(cpu_state_dict(model), path / WEIGHTS_FILE, {"format": "pt", CONFIG_KEY: json.dumps(config)})
        write_json(config, path / CONFIG_FILE)
    return path


def export_weights(model: VisionTransformer, path: str | os.PathLike, to: str) -> Path:
    """Write the model's weights for another tool: `deit` (save_weights), `timm` (a state dict file, .safetensors
    or .pth, that timm's model of the same name loads with strict=True), or `hf` (a folder that transformers'
    `from_pretrained` loads)."""
    path = Path(path)
    if to == "deit":
        return save_weights(model, path)
    if to == "timm":
        if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
            raise WeightsError(f"timm weights go to a file: name it {path.name}.safetensors or {path.name}.pth")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            write_safetensors(cpu_state_dict(model), path, {"format": "pt"})
        else:
            atomic_write(path, lambda tmp: torch.save(cpu_state_dict(model), tmp))
        return path
    if to == "hf":
        tensors, config = hf.to_hf(model)
        path.mkdir(parents=True, exist_ok=True)
        write_safetensors(tensors, path / WEIGHTS_FILE, {"format": "pt"})
        write_json(config, path / CONFIG_FILE)
        return path
    raise WeightsError(f"unknown weights format {to!r}; choose one of {', '.join(LAYOUTS)}")
