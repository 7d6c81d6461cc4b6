"""Distillation losses of the DeiT paper, as the official code computes them, and attention distillation.

- none: base criterion on the class head.
- soft: KL(student_dist / tau || teacher / tau) with reduction sum, times tau^2, divided by the number of logits
  (`outputs.numel()`), the official normalisation; total = (1 - alpha) * base + alpha * soft.
- hard: cross-entropy of the distillation head against the teacher's argmax; total = (1 - alpha) * base +
  alpha * hard (alpha = 0.5 in the paper).
- attention (with any of the above): + beta * distance between the student's and the teacher's attention maps
  (see `attention.py`).

The class head learns from the labels (through `base_criterion`, e.g. soft-target cross-entropy under Mixup) and
the distillation head from the teacher. A student without a distillation token is distilled through its class
head. The teacher sees the same (mixed) images as the student.

Images without a label (`--unlabelled`): the class head's target on such an image is the teacher's decision (its
argmax), so every image of a batch weighs 1/B in each head's loss, labelled or not. A class loss averaged over the
labelled images alone would give each the weight of a whole batch, and leave the class head starved of targets
(measured in docs/few-labels.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_LOSSES, attention_loss, patch_attention, teacher_logits_and_maps

DISTILLATION_TYPES = ("none", "soft", "hard")


@dataclass(frozen=True)
class AttentionDistillation:
    """What the attention term needs to know: its weight, the blocks, the distance, and the student's layout."""

    weight: float
    blocks: tuple[int, ...]
    loss: str
    depth: int  # student blocks
    num_prefix: int  # student tokens before the patches
    grid: int  # student patch grid side
    heads: int  # student heads

    def __post_init__(self):
        if self.weight <= 0:
            raise ValueError(f"attention distillation weight {self.weight} must be > 0")
        if self.loss not in ATTENTION_LOSSES:
            raise ValueError(f"attention loss {self.loss!r} is not one of {ATTENTION_LOSSES}")
        for i in self.blocks:
            if not -self.depth <= i < self.depth:
                raise ValueError(f"attention layer {i} does not exist: the student has {self.depth} blocks")

    @classmethod
    def for_student(cls, student: nn.Module, weight: float, blocks: tuple[int, ...], loss: str):
        if not hasattr(student, "forward_attention"):
            raise ValueError(f"attention distillation needs a DeiT student, not {type(student).__name__}")
        return cls(
            weight,
            tuple(blocks),
            loss,
            len(student.blocks),
            student.num_prefix_tokens,
            student.patch_embed.grid_size,
            student.num_heads,
        )


def class_criterion(*, mixup: bool, smoothing: float, bce: bool = False) -> nn.Module:
    """The class head's loss on its targets: soft-target cross-entropy on Mixup/CutMix's mixed (already smoothed)
    targets, else label smoothing, else plain cross-entropy. `bce` (DeiT III): timm's binary cross-entropy, a mixed
    target's every class present set to 1 (as the official DeiT III binarises them), a label one-hot and smoothed."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if bce:
        return BinaryCrossEntropy(smoothing=0.0 if mixup else smoothing, target_threshold=0.0 if mixup else None)
    if mixup:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing)
    return nn.CrossEntropyLoss()


class DistillationLoss(nn.Module):
    def __init__(
        self,
        base_criterion: nn.Module,
        teacher: nn.Module | None,
        distillation_type: str,
        alpha: float,
        tau: float,
        attention: AttentionDistillation | None = None,
        cached: bool = False,
    ):
        """`cached`: the teacher's outputs come with every call (from a teacher cache); `teacher` may be None."""
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type={distillation_type!r} is not one of {DISTILLATION_TYPES}")
        if (distillation_type != "none" or attention is not None) and teacher is None and not cached:
            raise ValueError(f"distillation_type={distillation_type!r} (or attention distillation) needs a teacher")
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.attention = attention

    def forward(self, inputs: torch.Tensor, outputs, labels: torch.Tensor) -> torch.Tensor:
        """The total loss, called as the official code calls it: loss(inputs, outputs, labels)."""
        return self.parts(inputs, outputs, labels)["loss"]

    def parts(
        self,
        inputs: torch.Tensor,
        outputs,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        student_maps: dict[int, torch.Tensor] | None = None,
        teacher_maps: list[torch.Tensor] | None = None,
        labelled: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"loss": total, "base_loss", "distill_loss" (soft/hard), "attn_loss" (attention distillation)}.

        `outputs` is the student's (cls_logits, dist_logits) tuple, or one tensor for a student without a
        distillation token. `teacher_logits` (and with attention distillation `teacher_maps`) may be given, computed
        earlier or read from a cache; else the teacher runs on `inputs`. With attention distillation,
        `student_maps` are the student's class-token rows {block: (B, heads, N)}. `labelled`: a bool mask of the
        images that have labels (None: all); the others take the teacher's decision as their label.
        """
        if isinstance(outputs, (tuple, list)):
            cls_logits, dist_logits = outputs
        else:
            cls_logits = dist_logits = outputs  # no distillation token: the class head learns from both
        needed = self.attention is not None and teacher_maps is None
        needed |= (self.distillation_type != "none" or labelled is not None) and teacher_logits is None
        if needed:
            if self.teacher is None:
                raise ValueError("this loss reads the teacher's outputs from a cache: pass teacher_logits/teacher_maps")
            teacher_logits, teacher_maps = self.teacher_outputs(inputs)
        if labelled is not None:
            labels = label_or_teacher(labels, labelled, teacher_logits)
        base = self.base_criterion(cls_logits, labels)
        result = {"loss": base, "base_loss": base}
        if self.distillation_type != "none":
            distill = self._distill(dist_logits.float(), teacher_logits.float())
            result["distill_loss"] = distill
            result["loss"] = (1 - self.alpha) * base + self.alpha * distill
        if self.attention is not None:
            if student_maps is None:
                raise ValueError("attention distillation needs the student's attention maps (student_maps)")
            attn = sum(
                attention_loss(
                    patch_attention(
                        student_maps[i % self.attention.depth], self.attention.num_prefix, per_head=target.ndim == 3
                    ),
                    target,
                    self.attention.loss,
                )
                for i, target in zip(self.attention.blocks, teacher_maps)
            ) / len(teacher_maps)
            result["attn_loss"] = attn
            result["loss"] = result["loss"] + self.attention.weight * attn
        return result

    def teacher_outputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """One teacher pass: its logits, and its maps over the student's grid when attention is distilled."""
        if self.attention is None:
            with torch.no_grad():
                return self.teacher(inputs), None
        return teacher_logits_and_maps(
            self.teacher,
            inputs,
            blocks=self.attention.blocks,
            grid=self.attention.grid,
            student_heads=self.attention.heads,
        )

    def _distill(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.distillation_type == "soft":
            T = self.tau
            return (
                F.kl_div(
                    F.log_softmax(dist_logits / T, dim=1),
                    F.log_softmax(teacher_logits / T, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                * (T * T)
                / dist_logits.numel()
            )
        return F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))


def label_or_teacher(labels: torch.Tensor, labelled: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Each image's label where it has one, else the teacher's argmax: class indices (B,), or class probabilities
    (B, C) under Mixup/CutMix, where an unlabelled (mixed) image gets the teacher's class as a one-hot row."""
    decided = teacher_logits.argmax(dim=1)
    if labels.is_floating_point():
        decided = F.one_hot(decided, labels.shape[1]).to(labels.dtype)
        return torch.where(labelled[:, None], labels, decided)
    return torch.where(labelled, labels, decided)
