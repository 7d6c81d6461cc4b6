"""Distillation: the paper's losses and teacher handling."""

from .losses import DISTILLATION_TYPES, DistillationLoss

__all__ = ["DISTILLATION_TYPES", "DistillationLoss"]
