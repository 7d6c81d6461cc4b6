"""One training epoch and one evaluation, on built objects (model, loss, loader, optimizer, schedule, EMA)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .distributed import all_reduce_sum


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops (`train.run` says what was kept)."""


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast when asked for, else nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def progress(description: str, total: int, enabled: bool):
    """A rich progress bar with free-text fields (loss, img/s); a silent stand-in when disabled."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )
    task = bar.add_task(description, total=total, info="")
    return bar, task


def train_one_epoch(
    model: nn.Module,
    criterion,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int,
    num_updates: int,
    mixup_fn: Callable | None = None,
    lr_schedule=None,
    ema=None,
    amp_dtype: torch.dtype | None = None,
    accum_iter: int = 1,
    clip_grad: float | None = None,
    show_progress: bool = True,
    world_size: int = 1,
    mix_seed: Callable[[int], int] | None = None,
    teacher_cache=None,
    num_classes: int | None = None,
    augment: Callable | None = None,
) -> tuple[dict, int]:
    """Train for one pass over `loader`. Returns the epoch's averages (loss and its parts, lr, images/s, skipped
    unreadable images) and the optimizer step count after it.

    `criterion.parts(inputs, outputs, targets)` gives {"loss", "base_loss", ...}: each part is averaged over steps
    and processes. Gradients are accumulated over `accum_iter` batches (without DDP communication but for the last).
    `mix_seed(step)` seeds each batch's Mixup/CutMix. With a `teacher_cache`, the teacher's outputs are read from it
    (the loader yields (images, targets, skipped, positions, indices), as `SeededDataset` gives them).
    `augment(images, seed)`: batch augmentation (`BatchAugment`) of the loader's uint8 images, under the step's seed.
    """
    model.train()
    attention = getattr(criterion, "attention", None)
    sums: dict[str, torch.Tensor] = {}
    steps, images_seen, skipped = 0, 0, 0
    bar, task = progress(f"epoch {epoch}", len(loader), show_progress)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with bar:
        for step, batch in enumerate(loader):
            images, targets, labelled, rest = prepare_batch(batch, device, mixup_fn, mix_seed, step, augment)
            skipped += int(rest[0].sum()) if rest else 0
            cached = {}
            if teacher_cache is not None:
                logits, maps = teacher_cache.lookup(epoch, rest[1], rest[2], images, num_classes)
                cached = {"teacher_logits": logits, "teacher_maps": maps}
            last_of_group = (step + 1) % accum_iter == 0 or step + 1 == len(loader)
            sync = contextlib.nullcontext() if last_of_group or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast(device, amp_dtype):
                    if attention is not None:  # the student's class-token rows at the distilled blocks, too
                        outputs, maps = model(images, attn_blocks=list(attention.layers), attn_form="cls")
                        parts = criterion.parts(
                            images, outputs, targets, student_maps=maps, labelled=labelled, **cached
                        )
                    else:
                        outputs = model(images)
                        parts = criterion.parts(images, outputs, targets, labelled=labelled, **cached)
                (parts["loss"] / accum_iter).backward()
            # one all-reduce of the detached parts: logged means over processes, and every process sees a NaN
            values = all_reduce_sum(torch.stack([p.detach().float() for p in parts.values()])) / world_size
            if not torch.isfinite(values[0]):
                raise NonFiniteLoss(f"the loss is {values[0].item()} at epoch {epoch}, step {step}")
            for key, value in zip(parts, values):
                sums[key] = sums.get(key, 0.0) + value
            if last_of_group:
                if clip_grad is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                num_updates += 1
                if ema is not None:
                    ema.update(unwrap(model), step=num_updates)
                if lr_schedule is not None:
                    lr_schedule.step_update(num_updates)
            steps += 1
            images_seen += images.shape[0] * world_size
            if show_progress and (step % 10 == 0 or step + 1 == len(loader)):
                rate = images_seen / (time.perf_counter() - start)
                bar.update(task, completed=step + 1, info=f"loss {sums['loss'].item() / steps:.4f}  {rate:,.0f} img/s")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    stats = {f"train_{key}" if key == "loss" else key: (value / max(steps, 1)).item() for key, value in sums.items()}
    skipped = int(all_reduce_sum(torch.tensor([skipped], dtype=torch.float64)).item())
    stats.update(
        lr=optimizer.param_groups[0]["lr"],
        images_per_s=images_seen / elapsed,
        train_seconds=elapsed,
        skipped_images=skipped,
    )
    return stats, num_updates


def prepare_batch(
    batch,
    device: torch.device,
    mixup_fn: Callable | None,
    mix_seed: Callable[[int], int] | None,
    step: int,
    augment: Callable | None = None,
):
    """(images, targets, *rest) from the loader -> (images, targets, labelled, rest): images and targets on the
    device, augmented (batch augmentation) and mixed under the step's seed.

    `labelled` is None when every image has its label; else a bool mask of the images that have one (target -1
    marks an image without, `--unlabelled`). Under Mixup/CutMix an image is labelled when both images mixed into it
    were (timm pairs image i with image B - 1 - i).
    """
    images, targets, *rest = batch
    labelled = None
    if not targets.is_floating_point() and bool((targets < 0).any()):  # still on the host: no device sync
        labelled = (targets >= 0).to(device, non_blocking=True)
        targets = targets.clamp(min=0)
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    seed = None  # the batch's seed, for batch augmentation and Mixup: drawn only when one of them needs it
    if augment is not None or mixup_fn is not None:
        seed = mix_seed(step) if mix_seed is not None else step
    if augment is not None:
        images = augment(images, seed)
    if mixup_fn is not None:
        if mix_seed is not None:  # timm's Mixup draws from Python's and NumPy's generators
            random.seed(seed)
            np.random.seed(seed % 2**32)
        images, targets = mixup_fn(images, targets)
        if labelled is not None:
            labelled = labelled & labelled.flip(0)
    return images, targets, labelled, rest


@torch.inference_mode()
def fill_teacher_cache(
    criterion,
    loader,
    cache,
    *,
    epoch: int,
    rank: int,
    device: torch.device,
    mixup_fn: Callable | None = None,
    mix_seed: Callable[[int], int] | None = None,
    amp_dtype: torch.dtype | None = None,
    show_progress: bool = True,
    augment: Callable | None = None,
) -> float:
    """Run the teacher over one epoch's views (the very ones training will see) and store its outputs for this
    process. Returns images per second."""
    bar, task = progress(f"teacher cache, epoch {epoch}", len(loader), show_progress)
    parts, seen, start = [], 0, time.perf_counter()
    with bar:
        for step, batch in enumerate(loader):
            images, _, _, (_, positions, indices) = prepare_batch(batch, device, mixup_fn, mix_seed, step, augment)
            with autocast(device, amp_dtype):
                logits, maps = criterion.teacher_outputs(images)
            parts.append(cache.entries(positions, indices, images, logits, maps))
            seen += len(images)
            bar.advance(task)
    cache.write_epoch(epoch, rank, parts)
    return seen / (time.perf_counter() - start)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    show_progress: bool = False,
    description: str = "eval",
) -> dict:
    """Top-1 / top-5 accuracy (%) and cross-entropy over the loader; sums over processes when distributed."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    bar, task = progress(description, len(loader), show_progress)
    with bar:
        for images, targets, *_ in loader:
            bar.advance(task)
            if images is None:  # a batch of unreadable files (`collate_readable`)
                continue
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = model(images)
            logits = logits.float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top5 == targets[:, None]
            totals += torch.stack(
                [
                    hits[:, 0].sum(),
                    hits.any(dim=1).sum(),
                    nn.functional.cross_entropy(logits, targets, reduction="sum"),
                    torch.tensor(len(targets), device=device),
                ]
            ).double()
    correct1, correct5, loss, count = all_reduce_sum(totals).tolist()
    count = max(count, 1)
    return {"acc1": 100.0 * correct1 / count, "acc5": 100.0 * correct5 / count, "loss": loss / count}


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
