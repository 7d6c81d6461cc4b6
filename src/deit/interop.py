"""Weights that other tools' own loaders take as they are, with the class names and preprocessing of training.

- `--to hf`: a transformers folder: `model.safetensors`, `config.json` (`id2label` / `label2id` from the class
  names) and `preprocessor_config.json` (a `BitImageProcessor`: the short side, or with crop mode `squash` the
  whole image, resized to size / crop ratio, the centre crop, our interpolation, mean and std), which
  `pipeline("image-classification", model=PATH)` and `AutoModelForImageClassification.from_pretrained(PATH)` load
  offline.
- `--to timm` to a folder: timm's layout, `model.safetensors` and a `config.json` with `architecture`,
  `num_classes`, `label_names`, `model_args` (the sizes) and `pretrained_cfg` (`input_size`, `mean`, `std`,
  `crop_pct`, `interpolation`), which `timm.create_model("local-dir:PATH", pretrained=True)` builds and loads, and
  `timm.data.resolve_data_config` reads as our preprocessing. To a `.safetensors` / `.pth` file: the state dict
  alone (`models.weights.export_weights`).

The reverse, reading such folders with their preprocessing, is `models.weights.read_checkpoint`'s.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .data.preprocess import preprocessing
from .models.metadata import WeightsError
from .models.weights import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    WEIGHTS_FILE,
    cpu_state_dict,
    export_weights,
    to_hf,
    write_json,
    write_safetensors,
)

LUMA = (0.299, 0.587, 0.114)  # PIL's RGB -> L weights (ITU-R 601-2)
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def export_for(model: torch.nn.Module, path: str | os.PathLike, to: str) -> Path:
    """`model` written for `to`: deit, timm (a folder, or a state-dict file) or hf (a folder)."""
    path = Path(path)
    if to == "hf":
        return write_hf(model, path)
    if to == "timm" and path.suffix not in FILE_SUFFIXES:
        return write_timm_folder(model, path)
    return export_weights(model, path, to)


def write_hf(model: torch.nn.Module, path: Path) -> Path:
    """A grayscale model goes out with three input channels: transformers' pipeline reads every image as RGB, and
    patch filters split over R, G, B by the weights of PIL's conversion to L see an RGB image as ours see it in
    gray (to PIL's rounding of L to whole levels); mean and std are repeated per channel."""
    prep = preprocessing(model)
    tensors, config = to_hf(model)
    gray = model.hparams["in_chans"] == 1
    if gray:
        key = next(k for k in tensors if k.endswith("embeddings.patch_embeddings.projection.weight"))
        tensors[key] = torch.cat([tensors[key] * w for w in LUMA], dim=1).contiguous()
        config["num_channels"] = 3
    config["id2label"] = {str(i): name for i, name in enumerate(prep.class_names)}
    config["label2id"] = {name: i for i, name in enumerate(prep.class_names)}
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, path / WEIGHTS_FILE, {"format": "pt"})
    write_json(config, path / CONFIG_FILE)
    write_json(
        hf_image_processor(prep, model.hparams["img_size"], channels=3 if gray else None), path / PREPROCESSOR_FILE
    )
    return path


def hf_image_processor(prep, size: int, channels: int | None = None) -> dict:
    """transformers' `BitImageProcessor` preparing images as `deit predict` does (8-bit images: the scaling of
    16-bit ones is ours alone); `channels`: mean and std repeated to that many."""
    mean, std = list(prep.mean), list(prep.std)
    side = math.floor(size / prep.crop_ratio)  # as timm's eval transform rounds it
    if channels and len(mean) == 1:
        mean, std = mean * channels, std * channels
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": side} if prep.crop_mode == "center" else {"height": side, "width": side},
        "resample": PIL_RESAMPLE[prep.interpolation],
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": len(mean) == 3,
    }


def timm_architecture(model: torch.nn.Module) -> str:
    """The timm model function that builds `model` given its sizes as `model_args`: its own name where timm
    registers it, else one of the same family."""
    import timm

    if model.model_name in timm.list_models():
        return model.model_name
    deit3 = model.hparams.get("layer_scale_init") is not None
    if deit3 and model.distilled:
        raise WeightsError(
            f"timm has no distilled DeiT III, so it cannot build {model.model_name}: write the weights to a "
            ".safetensors file (--to timm), or as ours (--to deit)"
        )
    if deit3:
        return "deit3_small_patch16_224"
    return "deit_tiny_distilled_patch16_224" if model.distilled else "deit_tiny_patch16_224"


def timm_model_args(hparams: dict) -> dict:
    """Our hparams as the keyword arguments of timm's VisionTransformer (DeiT III: `init_values`,
    `no_embed_class`)."""
    args = {
        key: hparams[key]
        for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")
    }
    if hparams.get("layer_scale_init") is not None:
        args["init_values"] = hparams["layer_scale_init"]
    if hparams.get("no_embed_class"):
        args["no_embed_class"] = True
    return args


def timm_config(model: torch.nn.Module) -> dict:
    prep = preprocessing(model)
    hp = model.hparams
    model_args = timm_model_args(hp)
    return {
        "architecture": timm_architecture(model),
        "num_classes": model.num_classes,
        "num_features": hp["embed_dim"],
        "global_pool": "token",
        "label_names": list(prep.class_names),
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [hp["in_chans"], hp["img_size"], hp["img_size"]],
            "fixed_input_size": True,
            "interpolation": prep.interpolation,
            "crop_pct": prep.crop_ratio,
            "crop_mode": prep.crop_mode,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "num_classes": model.num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": ["head", "head_dist"] if model.distilled else "head",
        },
    }


def write_timm_folder(model: torch.nn.Module, path: Path) -> Path:
    config = timm_config(model)
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(cpu_state_dict(model), path / WEIGHTS_FILE, {"format": "pt"})
    write_json(config, path / CONFIG_FILE)
    return path
