"""The model parts: inference, a training step, and a distilled step with the teacher online or cached, ours
against timm's twin on the same weights."""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..distill.cache_spec import CacheSpec, DataSpec, TeacherSpec, ViewSpec
from .timing import Bench, paired_rates, ratio, repeated, report, report_pairs


def timm_twin(ours: torch.nn.Module) -> torch.nn.Module:
    """timm's VisionTransformer (or its distilled variant) with our model's hyperparameters and weights."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    from ..models.timm_folder import model_args

    hp = dict(ours.hparams)
    cls = VisionTransformerDistilled if ours.distilled else VisionTransformer
    twin = cls(num_classes=hp["num_classes"], drop_path_rate=hp.get("drop_path_rate", 0.0), **model_args(hp))
    twin.load_state_dict(ours.state_dict(), strict=True)
    return twin


def compared_models(ours: torch.nn.Module, twin: torch.nn.Module, compile_models: bool) -> dict[str, torch.nn.Module]:
    models = {"ours": ours, "timm": twin}
    if compile_models:  # eager and compiled side by side: the compiled baseline is the one to beat
        models.update({"ours compiled": torch.compile(ours), "timm compiled": torch.compile(twin)})
    return models


def compared_optimizers(ours: torch.nn.Module, twin: torch.nn.Module, dev: torch.device) -> dict:
    """AdamW for each model, keyed as `models` is without " compiled"; ours with the fused kernel."""
    from timm.optim import create_optimizer_v2

    fused = {"fused": True} if dev.type in ("cpu", "cuda") else {}
    return {
        "ours": create_optimizer_v2(ours, opt="adamw", lr=1e-4, weight_decay=0.05, **fused),
        "timm": create_optimizer_v2(twin, opt="adamw", lr=1e-4, weight_decay=0.05),
    }


def _train_step(model: torch.nn.Module, opt, loss_fn: Callable, amp) -> None:
    with amp:
        loss = loss_fn(model)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def trainer(models: dict, optimizers: dict, key: str, loss_fn: Callable, amp) -> Callable[[], None]:
    """One optimiser step of `models[key]` on `loss_fn(model)`."""
    return functools.partial(_train_step, models[key], optimizers[key.split()[0]], loss_fn, amp)


def _infer(model: torch.nn.Module, x: torch.Tensor, amp) -> None:
    with torch.inference_mode(), amp:
        model(x)


def measure_inference(b: Bench) -> list[dict]:
    for key in ("ours", "timm"):  # the compiled models share these modules
        b.models[key].eval()
    run = {k: repeated(functools.partial(_infer, m, b.x, b.amp), b.steps) for k, m in b.models.items()}
    measured = paired_rates(run, len(b.x) * b.steps, b.rounds, 1, b.sync)
    return report_pairs("inference", measured, b.compiled)


def _plain_loss(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    out = model(x)
    return sum(F.cross_entropy(o.float(), y) for o in (out if isinstance(out, tuple) else (out,)))


def measure_train(b: Bench) -> list[dict]:
    loss_fn = functools.partial(_plain_loss, b.x, b.y)
    run = {k: repeated(trainer(b.models, b.optimizers, k, loss_fn, b.amp), b.steps) for k in b.models}
    measured = paired_rates(run, len(b.x) * b.steps, b.rounds, 1, b.sync)
    return report_pairs("train step", measured, b.compiled)


def distillation_parts(cfg: dict, dev: torch.device):
    """The preset's teacher, the distillation loss running it, and the loss taking its outputs from a cache."""
    from ..distill import DistillationLoss
    from ..teachers import Teacher, create_cnn

    cnn = create_cnn(cfg["teacher"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
    teacher = Teacher(cnn, cfg["teacher"], cfg["num_classes"]).to(dev)
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "hard", 0.5, 1.0)
    cached_loss = DistillationLoss(torch.nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0, cached=True)
    return teacher, loss, cached_loss


def _bench_spec(cfg: dict, bs: int, steps: int) -> CacheSpec:
    """A cache description for the benchmark's synthetic cache."""
    return CacheSpec(
        data=DataSpec("random", bs * steps, cfg["num_classes"]),
        views=ViewSpec(seed=0, batch_size=bs),
        teacher=TeacherSpec(cfg["teacher"]),
        topk=min(10, cfg["num_classes"]),
    )


def synthetic_cache(folder: str, cfg: dict, teacher, x: torch.Tensor, batches: int, amp):
    """A real cache on disk holding the teacher's outputs on `x` for `batches` batches of epoch 0; with each
    batch's positions (which are also its indices)."""
    from ..distill.cache import TeacherCache

    bs = len(x)
    cache = TeacherCache.open_or_create(folder, _bench_spec(cfg, bs, batches), create=True)
    positions = [torch.arange(i * bs, (i + 1) * bs) for i in range(batches)]
    with torch.inference_mode(), amp:  # (the stored outputs are the stand-in batch's: timing is the point)
        logits = teacher(x)
    cache.write_epoch(0, 0, [cache.entries(p, p, x, logits, None) for p in positions])
    return cache, positions


def _online_loss(loss, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    return loss.parts(x, model(x), y)["loss"]


def _cached_loss(loss, cache, positions: list, counter, x, y, model: torch.nn.Module) -> torch.Tensor:
    """The distillation loss with the teacher's outputs read from `cache`, its batches in turn."""
    i = next(counter) % len(positions)
    teacher_logits, _ = cache.lookup(0, positions[i], positions[i], x)
    return loss.parts(x, model(x), y, teacher_logits=teacher_logits)["loss"]


def measure_distilled(b: Bench, distillation) -> list[dict]:
    """The official loop, ours with the teacher online and ours with it cached, in one set of rounds."""
    teacher, loss, cached_loss = distillation
    with tempfile.TemporaryDirectory() as folder:
        cache, positions = synthetic_cache(folder, b.cfg, teacher, b.x, b.steps, b.amp)
        online = functools.partial(_online_loss, loss, b.x, b.y)
        from_cache = functools.partial(_cached_loss, cached_loss, cache, positions, itertools.count(), b.x, b.y)
        run = {
            "timm + teacher": trainer(b.models, b.optimizers, b.baseline, online, b.amp),
            "ours + teacher": trainer(b.models, b.optimizers, b.student, online, b.amp),
            "ours + cache": trainer(b.models, b.optimizers, b.student, from_cache, b.amp),
        }
        run = {k: repeated(fn, b.steps) for k, fn in run.items()}
        measured = paired_rates(run, len(b.x) * b.steps, b.rounds, 1, b.sync)
    result = report("distilled step, teacher online", measured, "ours + teacher", "timm + teacher")
    result["cached_ratio"] = ratio(measured["times"], "ours + cache", "timm + teacher")
    print(f"{'distilled step, teacher cached':34s} ours + cache / timm + teacher: {result['cached_ratio']:.2f}x")
    return [result]
