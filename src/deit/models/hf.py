"""Hugging Face transformers' layout, both ways: its tensor names (`save_pretrained`'s and newer in-memory ones) to
ours and back, its config.json checked against the tensors, and its preprocessor_config.json read with the meaning
transformers gives each field, or written for `BitImageProcessor`."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch

from .metadata import (
    HPARAM_BOUNDS,
    WeightsError,
    channel_values,
    check_value,
    names_list,
    show_value,
    tensor_hparams,
)
from .vit import VisionTransformer

# Inside encoder layer N. The first group is what `save_pretrained` writes (and the hub holds); the second, the
# in-memory names of newer transformers releases.
BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


BLOCK_NEW = {"attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


TOP = {  # under the `deit.` / `vit.` prefix
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
}


HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}


QKV = re.compile(r"attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)$")


LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)$")


MARKER = "embeddings.patch_embeddings.projection.weight"


def layout_prefix(sd: dict[str, torch.Tensor]) -> str | None:
    """The prefix of an HF state dict's model keys; None when the keys are not HF's."""
    return next((k[: -len(MARKER)] for k in sd if k.endswith(MARKER)), None)


def from_hf(sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our key names for an HF state dict whose model keys start with `prefix` (`deit.`, `vit.`, or none): (state
    dict, the keys a DeiT classifier has no use for)."""
    out, ignored, qkv = {}, [], defaultdict(dict)
    for key, value in sd.items():
        rest = key[len(prefix) :] if key.startswith(prefix) else None
        module, _, param = key.rpartition(".")
        if module in HEADS:  # classifiers sit outside the prefix
            out[f"{HEADS[module]}.{param}"] = value
        elif rest is None or rest.startswith(("pooler.", "embeddings.mask_token")):
            ignored.append(key)  # pooler and mask token: not part of a DeiT classifier
        elif layer := LAYER.match(rest):
            index, sub = layer.groups()
            if part := QKV.match(sub):
                which = (part[1] or part[2])[0]  # q, k or v
                qkv[(index, part[3])]["qkv".index(which)] = value
                continue
            sub_module, _, sub_param = sub.rpartition(".")
            target = BLOCK.get(sub_module) or BLOCK_NEW.get(sub_module)
            out[f"blocks.{index}.{target}.{sub_param}" if target else key] = value
        else:
            top_module = rest.rpartition(".")[0] if rest.endswith((".weight", ".bias")) else rest
            suffix = rest[len(top_module) :]
            out[TOP[top_module] + suffix if top_module in TOP else key] = value
    for (index, param), parts in qkv.items():
        if len(parts) != 3:
            raise WeightsError(f"HF checkpoint has an incomplete query/key/value set in layer {index}")
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out, ignored


def to_hf(model: VisionTransformer) -> tuple[dict[str, torch.Tensor], dict]:
    """The model's weights in HF transformers' names (as `save_pretrained` writes them) and a matching config."""
    if model.hparams.get("layer_scale_init") is not None or model.hparams.get("no_embed_class"):
        raise WeightsError(
            f"transformers has no model with DeiT III's LayerScale and patch-only position embeddings, so "
            f"{model.model_name or 'this model'} cannot be written for it: use --to timm (timm's deit3_*) or --to deit"
        )
    distilled = model.distilled
    prefix = "deit." if distilled else "vit."
    block_names = {ours: hf for hf, ours in BLOCK.items()}
    top_names = {ours: hf for hf, ours in TOP.items()}
    head_names = {"head": "cls_classifier" if distilled else "classifier", "head_dist": "distillation_classifier"}
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if key.startswith("blocks."):
            _, index, sub = key.split(".", 2)
            module, _, param = sub.rpartition(".")
            if module == "attn.qkv":
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{prefix}encoder.layer.{index}.attention.attention.{name}.{param}"] = part.contiguous()
            else:
                out[f"{prefix}encoder.layer.{index}.{block_names[module]}.{param}"] = value.contiguous()
        else:
            module, _, param = key.rpartition(".")
            if module in head_names:
                out[f"{head_names[module]}.{param}"] = value.contiguous()
            elif key in top_names:  # tokens and pos_embed have no `.weight`
                out[prefix + top_names[key]] = value.contiguous()
            else:
                out[f"{prefix}{top_names[module]}.{param}"] = value.contiguous()
    hp = model.hparams
    labels = {str(i): f"LABEL_{i}" for i in range(hp["num_classes"])}
    config = {
        "architectures": ["DeiTForImageClassificationWithTeacher" if distilled else "ViTForImageClassification"],
        "model_type": "deit" if distilled else "vit",
        "hidden_size": hp["embed_dim"],
        "num_hidden_layers": hp["depth"],
        "num_attention_heads": hp["num_heads"],
        "intermediate_size": int(hp["embed_dim"] * hp["mlp_ratio"]),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": hp["img_size"],
        "patch_size": hp["patch_size"],
        "num_channels": hp["in_chans"],
        "qkv_bias": hp["qkv_bias"],
        "encoder_stride": hp["patch_size"],
        "id2label": labels,
        "label2id": {v: int(k) for k, v in labels.items()},
    }
    return out, config


def check_config(config, where: str) -> dict:
    """The parts of an HF config.json that are read: the head count; a model type other than ViT or DeiT is refused
    (checked against the tensors by `check_hf_matches`)."""
    if not isinstance(config, dict):
        raise WeightsError(f"{where}: config.json must hold a mapping")
    if config.get("model_type") not in MODEL_TYPES:
        raise WeightsError(
            f"{where}: model_type={show_value(config.get('model_type'))}; deit reads ViT and DeiT models "
            f"({', '.join(MODEL_TYPES)})"
        )
    if "num_attention_heads" in config:
        check_value(where, "num_attention_heads", config["num_attention_heads"], *HPARAM_BOUNDS["num_heads"])
    return config


MODEL_TYPES = ("vit", "deit")


# What transformers' config.json fields mean in our terms: each one given must agree with the tensors
SIZES = {
    "hidden_size": "embed_dim",
    "num_hidden_layers": "depth",
    "image_size": "img_size",
    "patch_size": "patch_size",
    "qkv_bias": "qkv_bias",
}


def check_matches(config: dict, sd: dict[str, torch.Tensor], where: str) -> None:
    """An HF config.json must describe the tensors beside it as a DeiT: a field that says otherwise (another
    architecture, activation or size) is refused, where it would be ignored."""
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(
        isinstance(a, str) and a.startswith(("ViT", "DeiT")) for a in architectures
    ):
        raise WeightsError(f"{where}: architectures={show_value(architectures)}; deit reads ViT and DeiT models")
    if config.get("hidden_act", "gelu") != "gelu":
        raise WeightsError(
            f"{where}: hidden_act={show_value(config['hidden_act'])}; a DeiT's MLP uses gelu, and these weights "
            "would compute something else"
        )
    seen = tensor_hparams(sd, where)
    fc1 = sd["blocks.0.mlp.fc1.weight"].shape[0]
    for theirs, ours in (*SIZES.items(), ("intermediate_size", None), ("num_channels", "in_chans")):
        if theirs not in config:
            continue
        value = fc1 if ours is None else seen[ours]
        if config[theirs] != value or isinstance(config[theirs], bool) != isinstance(value, bool):
            raise WeightsError(
                f"{where}: {theirs}={show_value(config[theirs])} but its tensors have {show_value(value)}; the "
                "folder is inconsistent (save the model again)"
            )


RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL's codes


# transformers' image processors whose preparation deit's eval transform repeats, with their defaults: an int
# `size` is a square for ViT's and DeiT's, the short side for BiT's and CLIP's (`default_to_square`); `crop`,
# whether they centre-crop unless told
PROCESSORS = {
    "ViTImageProcessor": dict(size={"height": 224, "width": 224}, square=True, crop=False, resample=2, clip=False),
    "DeiTImageProcessor": dict(size={"height": 256, "width": 256}, square=True, crop=True, resample=3, clip=False),
    "BitImageProcessor": dict(size={"shortest_edge": 224}, square=False, crop=True, resample=3, clip=True),
    "CLIPImageProcessor": dict(size={"shortest_edge": 224}, square=False, crop=True, resample=3, clip=True),
}


PROCESSOR_OF_MODEL_TYPE = {"vit": "ViTImageProcessor", "deit": "DeiTImageProcessor"}  # AutoImageProcessor's choice


IMAGENET_STANDARD = [0.5, 0.5, 0.5]


OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]


OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def read_processor(config: dict, processor, where: str) -> dict:
    """Class names (`id2label`, unless transformers' placeholders LABEL_0, ...) and, from preprocessor_config.json,
    the preprocessing in our data config's keys, with the meaning transformers gives each field (its processor
    class's defaults for a field left out); a field our eval transform cannot repeat is refused."""
    data = {}
    labels = config.get("id2label")
    if isinstance(labels, dict) and labels:
        try:
            ordered = [labels[str(i)] for i in range(len(labels))]
        except KeyError:
            raise WeightsError(f"{where}: id2label must number the classes 0 to {len(labels) - 1}") from None
        names = names_list(ordered, where, "id2label")
        if names != [f"LABEL_{i}" for i in range(len(names))]:
            data["class_names"] = names
    if processor is None:
        return data
    where = where.replace("config.json", "preprocessor_config.json")
    if not isinstance(processor, dict):
        raise WeightsError(f"{where} must hold a mapping")
    kind = processor.get("image_processor_type") or processor.get("feature_extractor_type")
    kind = PROCESSOR_OF_MODEL_TYPE.get(config.get("model_type")) if kind is None else kind
    name = kind.removesuffix("Fast").replace("FeatureExtractor", "ImageProcessor") if isinstance(kind, str) else None
    if name not in PROCESSORS:
        raise WeightsError(
            f"{where}: image_processor_type={show_value(kind)}; deit repeats the preparation of "
            f"{', '.join(PROCESSORS)}: write one of these"
        )
    defaults = PROCESSORS[name]

    def given(key, default):
        """A value transformers reads: its class's default when left out; null it refuses, as we do."""
        if key not in processor:
            return default
        if processor[key] is None:
            raise WeightsError(f"{where}: {key}=null; give a value, or leave the field out for the default")
        return processor[key]

    def flag(key, default):
        """A switch: null switches the step off, as transformers tests it."""
        value = processor.get(key, default)
        if value is not None and not isinstance(value, (bool, int)):
            raise WeightsError(f"{where}: {key}={show_value(value)} must be true or false")
        return bool(value)

    resample = given("resample", defaults["resample"])
    if not isinstance(resample, int) or isinstance(resample, bool) or resample not in RESAMPLE_NAMES:
        raise WeightsError(f"{where}: resample={show_value(resample)} is not a PIL resampling filter")
    data["interpolation"] = RESAMPLE_NAMES[resample]
    if not flag("do_resize", True):
        raise WeightsError(f"{where}: do_resize=false feeds images at their own size; deit resizes them")
    size = _size(given("size", defaults["size"]), defaults["square"], where, "size")
    cropped = flag("do_center_crop", defaults["crop"])
    crop = _size(given("crop_size", {"height": 224, "width": 224}), True, where, "crop_size") if cropped else None
    side, square = size
    data["crop_mode"] = "squash" if square else "center"
    data["input_size"] = crop[0] if crop else side
    data["eval_crop_ratio"] = crop[0] / side if crop else 1.0
    # transformers computes (x * rescale_factor - mean) / std on 0-255 pixels; we (x / 255 - mean') / std'
    scale = 255.0
    if flag("do_rescale", True):
        scale *= float(check_value(where, "rescale_factor", given("rescale_factor", 1 / 255), float, 1e-9, 1.0))
    if flag("do_normalize", True):
        mean = given("image_mean", OPENAI_CLIP_MEAN if defaults["clip"] else IMAGENET_STANDARD)
        std = given("image_std", OPENAI_CLIP_STD if defaults["clip"] else IMAGENET_STANDARD)
        mean, std = channel_values(mean, where, "image_mean"), channel_values(std, where, "image_std")
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    for key, values in (("image_mean", mean), ("image_std", std)):
        for v in values:
            check_value(where, key, v, float, -1e3, 1e3)
    data["mean"] = [m / scale for m in mean]
    data["std"] = [s / scale for s in std]
    return data


def _size(value, int_is_square: bool, where: str, key: str) -> tuple[int, bool]:
    """(side, whether the whole image is resized to a square) of a processor's `size` or `crop_size`, as
    transformers' `get_size_dict` reads it; sizes our square inputs cannot follow are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"height": value, "width": value} if int_is_square else {"shortest_edge": value}
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return check_value(where, key, value["shortest_edge"], *HPARAM_BOUNDS["img_size"]), False
    if isinstance(value, dict) and set(value) == {"height", "width"} and value["height"] == value["width"]:
        return check_value(where, key, value["height"], *HPARAM_BOUNDS["img_size"]), True
    raise WeightsError(
        f"{where}: {key}={show_value(value)}; deit prepares square images: give a shortest_edge, or an equal "
        "height and width"
    )


RESAMPLE_CODES = {name: code for code, name in RESAMPLE_NAMES.items()}


def processor_config(prep, size: int, channels: int | None = None) -> dict:
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
        "resample": RESAMPLE_CODES[prep.interpolation],
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": len(mean) == 3,
    }
