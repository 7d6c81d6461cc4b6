"""The optimiser's side of training: optimizer, per-step learning-rate schedule, weight EMA, accumulation, clipping.

Built from timm's factories (`create_optimizer_v2`, `CosineLRScheduler`, `ModelEmaV3`) with plain numbers;
`Updates` is what the engine calls after each batch's backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import unwrap


def build_optimizer(
    model: nn.Module, *, opt: str, lr: float, weight_decay: float, momentum: float, eps: float, device: torch.device
) -> torch.optim.Optimizer:
    """timm's optimizer `opt` (no weight decay on norms, biases, tokens and pos_embed); Adam and AdamW use torch's
    fused kernel, one pass over all tensors instead of a loop over them."""
    from timm.optim import create_optimizer_v2

    fused = {"fused": True} if opt.lower() in ("adam", "adamw") and device.type in ("cpu", "cuda") else {}
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, eps=eps, **fused)


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    warmup_steps: int,
    warmup_lr: float,
    min_lr: float,
):
    """Linear warmup from `warmup_lr` over `warmup_steps`, then a cosine down to `min_lr` at `steps`, per step."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(
        optimizer, t_initial=steps, lr_min=min_lr, warmup_t=warmup_steps, warmup_lr_init=warmup_lr, t_in_epochs=False
    )


def weight_ema(model: nn.Module, decay: float):
    """An exponential moving average of the weights, updated every optimizer step."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


class Updates:
    """Optimizer steps every `accum_iter` batches (gradients clipped to `clip_grad` first), then the schedule and
    the EMA; counts the steps, which a resumed run restores."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule=None,
        ema=None,
        *,
        accum_iter: int = 1,
        clip_grad: float | None = None,
        num_updates: int = 0,
    ):
        self.optimizer, self.schedule, self.ema = optimizer, schedule, ema
        self.accum_iter, self.clip_grad = accum_iter, clip_grad
        self.num_updates = num_updates
        self.optimizer.zero_grad(set_to_none=True)

    def ends_group(self, step: int, steps: int) -> bool:
        """Whether batch `step` of `steps` closes an accumulation group (the optimizer steps after it)."""
        return (step + 1) % self.accum_iter == 0 or step + 1 == steps

    def step(self, model: nn.Module) -> None:
        """One optimizer step on the accumulated gradients of `model` (the trained module, DDP-wrapped or not)."""
        if self.clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        if self.ema is not None:
            self.ema.update(unwrap(model), step=self.num_updates)
        if self.schedule is not None:
            self.schedule.step_update(self.num_updates)

    def resume(self, num_updates: int) -> None:
        """Continue counting (and the schedule) from a checkpoint's step."""
        self.num_updates = num_updates
        if self.schedule is not None:
            self.schedule.step_update(num_updates)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
