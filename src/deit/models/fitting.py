"""Fitting a checkpoint to a model: the distillation token added or dropped, the position embedding resized to the
patch grid, RGB filters folded for one channel, a head of another class count left out; anything else that does not
fit is named, key by key, with the model it looks made for.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os

import torch
import torch.nn.functional as F

from .metadata import WeightsError
from .vit import VisionTransformer
from .weights import Checkpoint, infer_architecture, read_checkpoint

log = logging.getLogger("deit")


def load_weights(model: VisionTransformer, path: str | os.PathLike) -> list[str]:
    """Load a checkpoint of any supported format into `model`; returns notes on what was adapted.

    `pos_embed` is resized (bicubic, prefix tokens kept) when the patch grid differs; RGB patch weights are summed
    for a 1-channel model; a head whose class count differs is dropped (left at its initialisation) with a warning.
    Anything else that does not fit raises `WeightsError` listing the mismatched keys and shapes.
    """
    return load_state(model, read_checkpoint(path))


def load_state(model: VisionTransformer, ckpt: Checkpoint) -> list[str]:
    check_finite(ckpt)
    sd = dict(ckpt.state_dict)
    expected = model.state_dict()
    notes, dropped = _adapt(sd, expected, model.pos_prefix_tokens)
    missing = [k for k in expected if k not in sd and k not in dropped]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(_mismatch_message(ckpt, model, sd, expected, missing, unexpected, wrong))
    model.load_state_dict(sd, strict=not dropped)
    if ckpt.ignored:
        notes.append(f"ignored {len(ckpt.ignored)} tensors a DeiT classifier has no use for ({ckpt.ignored[0]}, ...)")
    for note in notes:
        (log.warning if note.startswith("head") else log.info)(f"{ckpt.path}: {note}")
    return notes


def check_finite(ckpt: Checkpoint) -> None:
    """Weights holding NaN or inf come from a run that diverged: every output would be NaN."""
    bad = [k for k, v in ckpt.state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(
            f"{ckpt.path} holds NaN or infinite values in {len(bad)} tensors ({', '.join(bad[:3])}): "
            "the training that wrote it diverged; use an earlier checkpoint"
        )


def _adapt(sd: dict, expected: dict, num_prefix: int) -> tuple[list[str], set[str]]:
    """Fit a checkpoint to the model, in place: add or drop the distillation token, resize pos_embed, fold RGB
    filters for 1-channel input, drop a head of another class count. Returns notes and the keys dropped."""
    notes, dropped = [], set()
    if "dist_token" in expected and "dist_token" not in sd and "cls_token" in sd and "pos_embed" in sd:
        # plain DeiT weights into a distilled model: the distillation token starts as a copy of the class token
        # (and its position embedding as a copy of the class token's, where the tokens have one)
        sd["dist_token"] = sd["cls_token"].clone()
        pos = sd["pos_embed"]
        if num_prefix:
            sd["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
        if "head.weight" in sd:
            sd["head_dist.weight"], sd["head_dist.bias"] = sd["head.weight"].clone(), sd["head.bias"].clone()
        notes.append("distillation token, its position and head_dist started from the class token's")
    elif "dist_token" in sd and "dist_token" not in expected and "pos_embed" in sd:
        sd.pop("dist_token")
        sd.pop("head_dist.weight", None)
        sd.pop("head_dist.bias", None)
        if num_prefix:
            sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :1], sd["pos_embed"][:, 2:]], dim=1)
        notes.append("distillation token and head_dist dropped: the model has none")
    ours, theirs = expected.get("pos_embed"), sd.get("pos_embed")
    if ours is not None and theirs is not None and ours.shape != theirs.shape and ours.shape[2] == theirs.shape[2]:
        old_grid = math.isqrt(theirs.shape[1] - num_prefix)
        new_grid = math.isqrt(ours.shape[1] - num_prefix)
        if old_grid**2 == theirs.shape[1] - num_prefix:
            sd["pos_embed"] = resize_pos_embed(theirs, new_grid, num_prefix)
            notes.append(f"pos_embed resized from a {old_grid}x{old_grid} to a {new_grid}x{new_grid} patch grid")
    ours, theirs = expected.get("patch_embed.proj.weight"), sd.get("patch_embed.proj.weight")
    if ours is not None and theirs is not None and ours.shape[1] == 1 and theirs.shape[1] == 3:
        # A grayscale image seen as RGB has three equal channels: summing the filters keeps the response.
        sd["patch_embed.proj.weight"] = theirs.sum(dim=1, keepdim=True)
        notes.append("RGB patch-embedding filters summed for a 1-channel input")
    ours, theirs = expected.get("head.weight"), sd.get("head.weight")
    if (
        ours is not None
        and theirs is not None
        and ours.shape[0] != theirs.shape[0]
        and ours.shape[1] == theirs.shape[1]
    ):
        dropped = {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
        for key in dropped:
            sd.pop(key, None)
        notes.append(
            f"head dropped: the checkpoint has {theirs.shape[0]} classes, the model {ours.shape[0]}; "
            "the new head starts untrained"
        )
    return notes, dropped


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix: int) -> torch.Tensor:
    """Bicubic resize of the patch part of a (1, prefix + g*g, C) position embedding; prefix tokens kept as is."""
    prefix, grid_part = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old_grid = math.isqrt(grid_part.shape[1])
    C = grid_part.shape[-1]
    grid_part = grid_part.float().reshape(1, old_grid, old_grid, C).permute(0, 3, 1, 2)  # (1, C, g, g)
    grid_part = F.interpolate(grid_part, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=True)
    grid_part = grid_part.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, C).to(pos_embed.dtype)
    return torch.cat([prefix, grid_part], dim=1)


def _mismatch_message(ckpt, model, sd, expected, missing, unexpected, wrong) -> str:
    def listing(keys, fmt, limit=4):
        shown = ", ".join(fmt(k) for k in keys[:limit])
        return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

    def shapes(k):
        return f"{k}: checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)}"

    parts = []
    if wrong:
        parts.append(f"{len(wrong)} tensors differ in shape ({listing(wrong, shapes)})")
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint ({listing(missing, str)})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model ({listing(unexpected, str)})")
    fix = "create the model the checkpoint was made for"
    with contextlib.suppress(WeightsError):
        name, kwargs, _ = infer_architecture(ckpt)
        fix += f" (it looks like {name})" if name else f" (embed_dim={kwargs['embed_dim']}, depth={kwargs['depth']})"
    model_name = getattr(model, "model_name", None) or type(model).__name__
    return f"{ckpt.path} does not fit {model_name}: {'; '.join(parts)}; {fix}"
