"""Distillation losses of the DeiT paper, as the official code computes them.

- none: base criterion on the class head.
- soft: KL(student_dist / tau || teacher / tau) with reduction sum, times tau^2, divided by the number of logits
  (`outputs.numel()`), the official normalisation; total = (1 - alpha) * base + alpha * soft.
- hard: cross-entropy of the distillation head against the teacher's argmax; total = (1 - alpha) * base +
  alpha * hard (alpha = 0.5 in the paper).

The class head always learns from the labels (through `base_criterion`, e.g. soft-target cross-entropy under Mixup)
and the distillation head from the teacher. A student without a distillation token is distilled through its class
head. The teacher sees the same (mixed) images as the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTILLATION_TYPES = ("none", "soft", "hard")


class DistillationLoss(nn.Module):
    def __init__(
        self,
        base_criterion: nn.Module,
        teacher: nn.Module | None,
        distillation_type: str,
        alpha: float,
        tau: float,
    ):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type={distillation_type!r} is not one of {DISTILLATION_TYPES}")
        if distillation_type != "none" and teacher is None:
            raise ValueError(f"distillation_type={distillation_type!r} needs a teacher")
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau

    def forward(self, inputs: torch.Tensor, outputs, labels: torch.Tensor) -> torch.Tensor:
        """The total loss, called as the official code calls it: loss(inputs, outputs, labels)."""
        return self.parts(inputs, outputs, labels)["loss"]

    def parts(self, inputs: torch.Tensor, outputs, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None):
        """{"loss": total, "base_loss": ..., "distill_loss": ...} (distill_loss absent for `none`).

        `outputs` is the student's (cls_logits, dist_logits) tuple, or one tensor for a student without a
        distillation token. `teacher_logits` may be given (e.g. computed earlier); else the teacher runs on `inputs`.
        """
        if isinstance(outputs, (tuple, list)):
            cls_logits, dist_logits = outputs
        else:
            cls_logits = dist_logits = outputs  # no distillation token: the class head learns from both
        base = self.base_criterion(cls_logits, labels)
        if self.distillation_type == "none":
            return {"loss": base, "base_loss": base}
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
        teacher_logits = teacher_logits.float()
        dist_logits = dist_logits.float()
        if self.distillation_type == "soft":
            T = self.tau
            distill = F.kl_div(
                F.log_softmax(dist_logits / T, dim=1),
                F.log_softmax(teacher_logits / T, dim=1),
                reduction="sum",
                log_target=True,
            ) * (T * T) / dist_logits.numel()
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        loss = (1 - self.alpha) * base + self.alpha * distill
        return {"loss": loss, "base_loss": base, "distill_loss": distill}
