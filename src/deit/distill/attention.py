"""Attention distillation: the student learns to attend where the teacher attends.

The student's map is its class token's softmax attention over the patches, at chosen blocks (head-averaged, or one
map per head when a ViT teacher has as many heads), renormalised over the patches. The teacher's map is
- a ViT teacher's class-token attention at the same blocks, resized to the student's patch grid if it differs;
- a CNN teacher's activation map (attention transfer: the channel mean of squared features) at its last stage,
  resized to the student's patch grid.
Maps are distributions over patches (they sum to 1). The loss between them is KL(teacher || student) by default,
or MSE between L2-normalised maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_LOSSES = ("kl", "mse")
EPS = 1e-8


def parse_blocks(text: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """ "-1" or "2,3" (or a list) -> block indices."""
    if isinstance(text, (list, tuple)):
        return tuple(int(i) for i in text)
    try:
        blocks = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ValueError(f"attention blocks {text!r}: give block indices such as -1 or 2,3") from None
    if not blocks:
        raise ValueError("attention blocks: give at least one block index, such as -1")
    return blocks


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative maps (..., P) -> distributions over the last axis."""
    maps = maps.float().clamp_min(0)
    return maps / maps.sum(dim=-1, keepdim=True).clamp_min(EPS)


def patch_attention(rows: torch.Tensor, num_prefix: int, per_head: bool) -> torch.Tensor:
    """Class-token attention rows (B, heads, N) -> a distribution over the patches: (B, P), or (B, heads, P)."""
    patches = rows[..., num_prefix:]
    if not per_head:
        patches = patches.mean(dim=1)
    return normalise(patches)


def activation_map(features: torch.Tensor) -> torch.Tensor:
    """CNN features (B, C, H, W) -> spatial attention (B, H*W): channel mean of squared activations, normalised."""
    return normalise(features.float().pow(2).mean(dim=1).flatten(1))


def resize_map(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """Distributions over a square grid (..., g*g) -> over a grid x grid one, renormalised.

    Shrinking averages the covered cells (area); growing interpolates bilinearly.
    """
    old = math.isqrt(maps.shape[-1])
    if old * old != maps.shape[-1]:
        raise ValueError(f"a map of {maps.shape[-1]} cells is not a square grid")
    if old == grid:
        return maps
    lead = maps.shape[:-1]
    image = maps.reshape(-1, 1, old, old)
    if grid < old:
        image = F.adaptive_avg_pool2d(image, grid)
    else:
        image = F.interpolate(image, size=(grid, grid), mode="bilinear", align_corners=False)
    return normalise(image.reshape(*lead, grid * grid))


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Distance between distributions over patches (..., P), averaged over everything but P.

    kl: KL(teacher || student). mse: squared distance between the L2-normalised maps (attention transfer).
    Zero for equal maps, positive otherwise.
    """
    student, teacher = student.float(), teacher.float()
    if kind == "kl":
        return (teacher * (teacher.clamp_min(EPS).log() - student.clamp_min(EPS).log())).sum(-1).mean()
    if kind == "mse":
        return (F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)).pow(2).sum(-1).mean()
    raise ValueError(f"attention loss {kind!r} is not one of {ATTENTION_LOSSES}")


def teacher_logits_and_maps(
    teacher: nn.Module, x: torch.Tensor, *, blocks: tuple[int, ...], grid: int, student_heads: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One teacher pass: its logits and one map per layer over the student's grid.

    A ViT teacher gives (B, heads, P) maps when its head count equals the student's, else (B, P); a CNN teacher
    (timm's `forward_features` / `forward_head`, or our small CNN) gives its last stage's activation map, (B, P).
    """
    model = getattr(teacher, "model", teacher)
    if hasattr(teacher, "inputs"):  # a `Teacher`: the views at the size it was trained at
        x = teacher.inputs(x)
    with torch.no_grad():
        if hasattr(model, "forward_attention"):  # a ViT
            logits, rows = model.forward_attention(x, blocks=list(blocks), form="cls")
            per_head = model.num_heads == student_heads
            maps = [
                resize_map(patch_attention(rows[i % len(model.blocks)], model.num_prefix_tokens, per_head), grid)
                for i in blocks
            ]
            return logits, maps
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise ValueError(
                f"attention distillation needs the teacher's feature maps: {type(model).__name__} has no "
                "forward_features/forward_head (use a timm architecture, small_cnn or a DeiT teacher)"
            )
        features = model.forward_features(x)
        logits = model.forward_head(features)
        if features.ndim != 4:
            raise ValueError(f"the teacher's features are {tuple(features.shape)}, not a (B, C, H, W) map")
        spatial = resize_map(activation_map(features), grid)
        return logits, [spatial] * len(blocks)
