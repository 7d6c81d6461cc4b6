"""timm's folder layout (`timm.create_model("local-dir:PATH")`): its config.json read with timm's meaning and
checked against the tensors, and the model arguments timm builds our models with."""

from __future__ import annotations

import torch

from .metadata import HPARAM_BOUNDS, WeightsError, channel_values, check_value, names_list, show_value, tensor_hparams

# timm.data's IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD and DEFAULT_CROP_PCT: what a timm folder's pretrained_cfg
# means where it leaves them out (timm is not imported to read a file)
IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DEFAULT_CROP_PCT = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875


def read_config(config: dict, where: str) -> tuple[dict, int | None]:
    """Class names and preprocessing (our data config's keys) and the head count of a timm folder's config.json
    (`label_names`, `pretrained_cfg`, `model_args`); each value checked when the model is built (`check_data`)."""
    pretrained = config.get("pretrained_cfg")
    if not isinstance(pretrained, dict):
        raise WeightsError(f"{where}: pretrained_cfg must be a mapping")
    data = {}
    if config.get("label_names") is not None:
        data["class_names"] = names_list(config["label_names"], where, "label_names")
    # a field left out (or null) means timm's default, as `timm.data.resolve_data_config` gives it
    for ours, theirs, default in (("mean", "mean", IMAGENET_DEFAULT_MEAN), ("std", "std", IMAGENET_DEFAULT_STD)):
        data[ours] = channel_values(pretrained.get(theirs) or list(default), where, theirs)
    data["eval_crop_ratio"] = pretrained.get("crop_pct") or DEFAULT_CROP_PCT
    data["crop_mode"] = pretrained.get("crop_mode") or "center"
    data["interpolation"] = pretrained.get("interpolation") or "bicubic"
    size = pretrained.get("input_size")
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 3 or size[1] != size[2]:
            raise WeightsError(f"{where}: input_size={show_value(size)} must be [channels, size, size] (square)")
        data["input_size"] = size[-1]
    args = config.get("model_args") or {}
    if not isinstance(args, dict):
        raise WeightsError(f"{where}: model_args must be a mapping")
    heads = args.get("num_heads")
    if heads is not None:
        heads = check_value(where, "num_heads", heads, *HPARAM_BOUNDS["num_heads"])
    return data, heads


# timm's VisionTransformer arguments: those the tensors show (each given must agree), those that must keep DeiT's
# value (another changes what the weights compute), and those of training alone
SIZES = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "qkv_bias", "no_embed_class")


AS_DEIT = {
    "class_token": (True,),
    "global_pool": ("token",),
    "reg_tokens": (0,),
    "fc_norm": (None, False),
    "pre_norm": (False,),
    "qk_norm": (False,),
    "act_layer": (None, "gelu"),
    "final_norm": (True,),
    "pos_embed": ("learn",),
}


TRAINING = (
    "num_heads",  # read as the head count (the tensors do not show it)
    "mlp_ratio",  # these three: checked below
    "init_values",
    "num_classes",
    "drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "weight_init",
    "dynamic_img_size",
    "dynamic_img_pad",
)


def check_matches(config: dict, sd: dict[str, torch.Tensor], where: str) -> None:
    """A timm config.json must describe the tensors beside it as a DeiT (or a ViT like it): an architecture of
    another family, or a model argument that says otherwise, is refused where it would be ignored."""
    arch = config.get("architecture")
    if arch is not None and not (isinstance(arch, str) and arch.startswith(("deit_", "deit3_", "vit_"))):
        raise WeightsError(f"{where}: architecture={show_value(arch)}; deit reads DeiT and ViT models")
    args = config.get("model_args") or {}
    seen = tensor_hparams(sd, where)
    for key, value in args.items():
        if key in SIZES:
            same = value == seen[key] and isinstance(value, bool) == isinstance(seen[key], bool)
            if not same:
                raise WeightsError(
                    f"{where}: model_args {key}={show_value(value)} but its tensors have {show_value(seen[key])}; "
                    "the folder is inconsistent (save the model again)"
                )
        elif key in AS_DEIT:
            if value not in AS_DEIT[key] or isinstance(value, bool) != isinstance(AS_DEIT[key][0], bool):
                raise WeightsError(
                    f"{where}: model_args {key}={show_value(value)}; a DeiT has {show_value(AS_DEIT[key][0])}, "
                    "and deit cannot build the model these weights belong to"
                )
        elif key not in TRAINING:
            raise WeightsError(f"{where}: model_args {show_value(key)} is not a DeiT's: deit cannot honour it")
    fc1, head = sd["blocks.0.mlp.fc1.weight"].shape[0], sd.get("head.weight")
    shown = {
        "mlp_ratio": lambda r: isinstance(r, (int, float)) and int(seen["embed_dim"] * r) == fc1,
        "init_values": lambda v: (v is None) == (seen["layer_scale_init"] is None),
        "num_classes": lambda n: head is None or n == head.shape[0],
    }
    for key, agrees in shown.items():
        if key in args and not agrees(args[key]):
            raise WeightsError(
                f"{where}: model_args {key}={show_value(args[key])} disagrees with its tensors; the folder is "
                "inconsistent (save the model again)"
            )


def architecture(model: torch.nn.Module) -> str:
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


def model_args(hparams: dict) -> dict:
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
