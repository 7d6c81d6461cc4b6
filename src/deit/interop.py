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

import os
from pathlib import Path

import torch

from .data.preprocess import preprocessing
from .models import hf, timm_folder
from .models.weights import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    WEIGHTS_FILE,
    cpu_state_dict,
    export_weights,
    write_json,
    write_safetensors,
)

LUMA = (0.299, 0.587, 0.114)  # PIL's RGB -> L weights (ITU-R 601-2)
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
    tensors, config = hf.to_hf(model)
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
        hf.processor_config(prep, model.hparams["img_size"], channels=3 if gray else None), path / PREPROCESSOR_FILE
    )
    return path


def timm_config(model: torch.nn.Module) -> dict:
    prep = preprocessing(model)
    hp = model.hparams
    model_args = timm_folder.model_args(hp)
    return {
        "architecture": timm_folder.architecture(model),
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
