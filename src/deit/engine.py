"""One training epoch, one teacher-cache epoch and one evaluation, on built objects.

The loss interface the engine calls (`distill.DistillationLoss`): `criterion.parts(inputs, outputs, targets,
labelled=, student_maps=, teacher_logits=, teacher_maps=)` returns {"loss": total, and each part} and
`criterion.teacher_outputs(inputs)` gives the teacher's (logits, maps); `criterion.attention`, when set, names the
student blocks whose attention maps the loss needs.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .distributed import all_reduce_sum, autocast
from .optim import Updates
from .progress import progress


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training stops (`train.run` says what was kept)."""


@dataclass
class Views:
    """How a loader's batch becomes what the model sees: on the device, decoded and cropped (`decode`, the device
    input path), batch-augmented (`BatchAugment`) and mixed (timm's Mixup/CutMix) under the batch's seed,
    `seed(epoch, step)` (the step when None)."""

    device: torch.device
    augment: Callable | None = None
    mixup: Callable | None = None
    seed: Callable[[int, int], int] | None = None
    decode: Callable | None = None  # `device_views.DeviceDecoder`: encoded images -> (crops, order)

    def counts(self) -> dict[str, int]:
        """What the decoder counted since the last call: images decoded on the CPU, images no decoder read."""
        return self.decode.take_counts() if self.decode is not None else {}

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, epoch: int, step: int):
        """(images, targets, labelled): `labelled` is None when every image has its label; else a bool mask of those
        that have one (target -1 marks an image without, `--unlabelled`). Under Mixup/CutMix an image is labelled
        when both images mixed into it were (timm pairs image i with image B - 1 - i)."""
        if self.decode is not None and not isinstance(images, torch.Tensor):
            images, order = self.decode(images)
            if order is not None:  # an image nothing could read: another's view, and its target, in its place
                targets = targets[order]
        labelled = None
        if not targets.is_floating_point() and bool((targets < 0).any()):  # still on the host: no device sync
            labelled = (targets >= 0).to(self.device, non_blocking=True)
            targets = targets.clamp(min=0)
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.augment is None and self.mixup is None:
            return images, targets, labelled
        seed = self.seed(epoch, step) if self.seed is not None else step
        if self.augment is not None:
            images = self.augment(images, seed)
        if self.mixup is not None:
            if self.seed is not None:  # timm's Mixup draws from Python's and NumPy's generators
                random.seed(seed)
                np.random.seed(seed % 2**32)
            images, targets = self.mixup(images, targets)
            if labelled is not None:
                labelled = labelled & labelled.flip(0)
        return images, targets, labelled


def train_one_epoch(
    model: nn.Module,
    criterion,
    loader,
    views: Views,
    updates: Updates,
    *,
    epoch: int,
    teacher_cache=None,
    amp_dtype: torch.dtype | None = None,
    world_size: int = 1,
    show_progress: bool = True,
) -> dict:
    """One pass over `loader` (`data.Batch`es). Returns the epoch's means over steps and processes: the loss and
    each of its parts, the lr, images/s and the unreadable images skipped.

    Gradients accumulate over `updates.accum_iter` batches, without DDP communication but for the last. With a
    `teacher_cache`, the teacher's outputs for each batch's views are read from it.
    """
    model.train()
    views.counts()  # the decoder's counts from before this epoch (a teacher cache's pass) are not its own
    sums: dict[str, torch.Tensor] = {}
    images_seen, skipped = 0, 0
    bar, task = progress(f"epoch {epoch}", len(loader), show_progress)
    start = time.perf_counter()
    with bar:
        for step, batch in enumerate(loader):
            images, targets, labelled = views(batch.images, batch.targets, epoch, step)
            skipped += int(batch.skipped.sum())
            teacher = {}
            if teacher_cache is not None:
                logits, maps = teacher_cache.lookup(epoch, batch.positions, batch.indices, images)
                teacher = {"teacher_logits": logits, "teacher_maps": maps}
            last = updates.ends_group(step, len(loader))
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                parts = _forward_backward(model, criterion, images, targets, labelled, teacher, views.device, amp_dtype)
                (parts["loss"] / updates.accum_iter).backward()
            # one all-reduce of the detached parts: logged means over processes, and every process sees a NaN
            values = all_reduce_sum(torch.stack([p.detach().float() for p in parts.values()])) / world_size
            if not torch.isfinite(values[0]):
                raise NonFiniteLoss(f"the loss is {values[0].item()} at epoch {epoch}, step {step}")
            for key, value in zip(parts, values):
                sums[key] = sums.get(key, 0.0) + value
            if last:
                updates.step(model)
            images_seen += images.shape[0] * world_size
            if show_progress and (step % 10 == 0 or step + 1 == len(loader)):
                rate = images_seen / (time.perf_counter() - start)
                bar.update(
                    task, completed=step + 1, info=f"loss {sums['loss'].item() / (step + 1):.4f}  {rate:,.0f} img/s"
                )
    if views.device.type == "cuda":
        torch.cuda.synchronize(views.device)
    elapsed = time.perf_counter() - start
    steps = max(len(loader), 1)
    stats = {f"train_{key}" if key == "loss" else key: (value / steps).item() for key, value in sums.items()}
    decoded = views.counts()
    # on the training device: NCCL, the GPUs' process group, reduces device tensors only
    counts = [skipped + decoded.get("unreadable", 0), decoded.get("cpu_decoded", 0)]
    counted = torch.tensor(counts, dtype=torch.float64, device=views.device)
    skipped, cpu_decoded = (int(n) for n in all_reduce_sum(counted).tolist())
    stats.update(lr=updates.lr, images_per_s=images_seen / elapsed, train_seconds=elapsed, skipped_images=skipped)
    if views.decode is not None:
        stats["cpu_decoded_images"] = cpu_decoded
    return stats


def _forward_backward(model, criterion, images, targets, labelled, teacher: dict, device, amp_dtype) -> dict:
    """The loss's parts for one batch, under autocast (the loss first; `backward` is the caller's)."""
    attention = getattr(criterion, "attention", None)
    with autocast(device, amp_dtype):
        if attention is not None:  # the student's class-token rows at the distilled blocks, too
            outputs, maps = model(images, attn_blocks=list(attention.blocks), attn_form="cls")
            teacher = {**teacher, "student_maps": maps}
        else:
            outputs = model(images)
        return criterion.parts(images, outputs, targets, labelled=labelled, **teacher)


@torch.inference_mode()
def fill_teacher_cache(
    criterion,
    loader,
    views: Views,
    cache,
    *,
    epoch: int,
    rank: int,
    amp_dtype: torch.dtype | None = None,
    show_progress: bool = True,
) -> None:
    """Run the teacher over one epoch's views (the very ones training will see) and store its outputs for this
    process."""
    bar, task = progress(f"teacher cache, epoch {epoch}", len(loader), show_progress)
    parts = []
    with bar:
        for step, batch in enumerate(loader):
            images, _, _ = views(batch.images, batch.targets, epoch, step)
            with autocast(views.device, amp_dtype):
                logits, maps = criterion.teacher_outputs(images)
            parts.append(cache.entries(batch.positions, batch.indices, images, logits, maps))
            bar.advance(task)
    cache.write_epoch(epoch, rank, parts)


def top5_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, 5) bool: whether the target is each of the 5 highest logits, highest first (top-1 is column 0, top-5
    any column; fewer columns when there are fewer classes)."""
    return logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]


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
            loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
            count = torch.tensor(len(targets), device=device)
            hits = top5_hits(logits, targets)
            totals += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), loss, count]).double()
    correct1, correct5, loss, count = all_reduce_sum(totals).tolist()
    count = max(count, 1)
    return {"acc1": 100.0 * correct1 / count, "acc5": 100.0 * correct5 / count, "loss": loss / count}
