"""Distillation: the paper's losses, attention distillation, teacher maps."""

from .attention import ATTENTION_LOSSES, activation_map, attention_loss, patch_attention, resize_map
from .losses import DISTILLATION_TYPES, AttentionDistillation, DistillationLoss

__all__ = [
    "ATTENTION_LOSSES",
    "DISTILLATION_TYPES",
    "AttentionDistillation",
    "DistillationLoss",
    "activation_map",
    "attention_loss",
    "patch_attention",
    "resize_map",
]
