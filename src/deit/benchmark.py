"""`deit benchmark`: where a distilled training step spends its time, ours against a timm baseline, in one run.

Measured, each as images/s for ours and for the baseline in interleaved rounds (the ratio is the median over
rounds of the paired times, so a machine that slows down moves both alike):

- inference: our DeiT against timm's on the same weights (eval, inference mode);
- train step: forward, backward and AdamW; ours with the fused AdamW kernel, timm's model with timm's optimizer
  factory (optionally both compiled);
- distilled step, teacher online: the official loop (timm's distilled DeiT, the teacher's forward every step)
  against ours doing the same;
- distilled step, teacher cached: ours reading the teacher's outputs from a teacher cache, against the official
  loop;
- data pipeline alone: the DeiT training augmentation on JPEG bytes held in memory, ours (per-sample seeded)
  against timm's transform, through a DataLoader with the given workers;
- end to end, distilled: loader, augmentation, teacher and student step over the JPEGs, the official loop against
  ours as `deit train` runs it (the teacher cached; views per image, or with batch augmentation).

bf16 autocast on CUDA, fp32 on the CPU, unless `precision` says otherwise (bf16 on the CPU runs the GPU's
dtype paths where a test can: `deit benchmark --precision bf16`). Random inputs; JPEGs are random-content images
at ImageNet's typical size (500x375).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .distill.cache import CacheSpec, DataSpec, TeacherSpec, ViewSpec
from .distributed import DistEnv, cpu_name, resolve_device, threads_beside
from .files import atomic_write, slug

PRESETS = {
    # the paper's DeiT-S distilled from a RegNetY-16GF (an H100/H200 does each part in seconds)
    "gpu": {
        "student": "deit_small_distilled_patch16_224",
        "teacher": "regnety_160",
        "batch_size": 256,
        "num_classes": 1000,
        "in_chans": 3,
        "jpeg_size": (500, 375),
    },
    # the demo's student and teacher on digits
    "cpu": {
        "student": "deit_pico_distilled_patch7_28",
        "teacher": "small_cnn",
        "batch_size": 32,
        "num_classes": 10,
        "in_chans": 1,
        "jpeg_size": (40, 40),
    },
}


PARTS = ("inference", "train", "distilled", "data", "e2e")


def save_record(record: dict, out_dir: str | Path) -> Path:
    """Write `record` as <out_dir>/<benchmark>_<machine>_<date>.json and say where."""
    out = Path(out_dir) / f"{record['benchmark']}_{slug(record['machine'])}_{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    print(f"saved {out}")
    return out


def timm_twin(ours: torch.nn.Module) -> torch.nn.Module:
    """timm's VisionTransformer (or its distilled variant) with our model's hyperparameters and weights."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    from .models.timm_folder import model_args

    hp = dict(ours.hparams)
    cls = VisionTransformerDistilled if ours.distilled else VisionTransformer
    twin = cls(num_classes=hp["num_classes"], drop_path_rate=hp.get("drop_path_rate", 0.0), **model_args(hp))
    twin.load_state_dict(ours.state_dict(), strict=True)
    return twin


def paired_rates(steps: dict[str, Callable[[], None]], images: int, rounds: int, warmup: int, sync) -> dict:
    """Time each step `rounds` times, alternating the order; images/s (median) per step and paired ratios."""
    times = {k: [] for k in steps}
    for round_ in range(warmup + rounds):
        for key in list(steps) if round_ % 2 == 0 else list(steps)[::-1]:
            sync()
            start = time.perf_counter()
            steps[key]()
            sync()
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
    rates = {k: images / statistics.median(v) for k, v in times.items()}
    return {"img_s": rates, "times": times}


def ratio(times: dict, ours: str, baseline: str) -> float:
    """Median over rounds of baseline time / our time: > 1 means ours is faster."""
    return statistics.median(b / o for b, o in zip(times[baseline], times[ours]))


class _Jpegs(torch.utils.data.Dataset):
    """JPEG bytes decoded per sample through `transform`, as (image, target, skipped)."""

    def __init__(self, blobs: list[bytes], mode: str, transform=None):
        self.blobs, self.mode, self.transform = blobs, mode, transform

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, index):
        from PIL import Image

        image = Image.open(io.BytesIO(self.blobs[index])).convert(self.mode)
        return self.transform(image), index % 10, 0


def jpeg_dataset(count: int, in_chans: int, size: tuple[int, int] = (500, 375)):
    """`count` random-content JPEGs held as bytes, decoded per sample (the data a real run reads)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    mode = "L" if in_chans == 1 else "RGB"
    blobs = []
    for _ in range(count):
        low = rng.integers(0, 256, (size[1] // 8, size[0] // 8, in_chans), dtype=np.uint8)  # smooth-ish content
        image = Image.fromarray(low.squeeze(-1) if in_chans == 1 else low, mode).resize(size, Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return _Jpegs(blobs, mode)


# -- shared pieces --------------------------------------------------------------------------------------------------
@dataclass
class Bench:
    """One benchmark run: its settings, and what every part measures with."""

    cfg: dict  # the preset
    dev: torch.device
    amp: contextlib.AbstractContextManager  # bf16 autocast, or nothing
    batch_size: int
    steps: int  # per timed step
    rounds: int
    num_workers: int
    compiled: bool
    x: torch.Tensor  # a stand-in batch and its targets
    y: torch.Tensor
    models: dict[str, torch.nn.Module]  # ours, timm's (and both compiled)
    optimizers: dict | None = None  # keyed as the models are, without " compiled"

    @property
    def student(self) -> str:
        """The model of ours that a distilled step trains: compiled when the run compiles."""
        return "ours compiled" if self.compiled else "ours"

    @property
    def baseline(self) -> str:
        return "timm compiled" if self.compiled else "timm"

    def sync(self) -> None:
        _sync(self.dev)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _no_sync() -> None:
    """For passes that sync at their own end (a whole loader pass)."""


def _repeated(fn: Callable[[], None], steps: int) -> None:
    for _ in range(steps):
        fn()


def _repeat(fn: Callable[[], None], steps: int) -> Callable[[], None]:
    """`fn` run `steps` times as one timed step."""
    return functools.partial(_repeated, fn, steps)


def _report(name: str, measured: dict, ours_key: str, base_key: str) -> dict:
    """Print one measurement's line; its entry in the record's results."""
    r = ratio(measured["times"], ours_key, base_key)
    line = "  ".join(f"{k} {v:,.0f} img/s" for k, v in measured["img_s"].items())
    print(f"{name:34s} {line}  | {ours_key} / {base_key}: {r:.2f}x")
    return {"measurement": name, "img_s": measured["img_s"], "ratio": r, "ours": ours_key, "baseline": base_key}


def _report_pairs(name: str, measured: dict, compiled: bool) -> list[dict]:
    """Ours against timm, eager; with compiled models also compiled against compiled and against timm eager."""
    results = [_report(name, measured, "ours", "timm")]
    if compiled:
        results.append(_report(name + ", compiled", measured, "ours compiled", "timm compiled"))
        results.append(_report(name + ", ours compiled vs timm eager", measured, "ours compiled", "timm"))
    return results


def _models(ours: torch.nn.Module, twin: torch.nn.Module, compile_models: bool) -> dict[str, torch.nn.Module]:
    models = {"ours": ours, "timm": twin}
    if compile_models:  # eager and compiled side by side: the compiled baseline is the one to beat
        models.update({"ours compiled": torch.compile(ours), "timm compiled": torch.compile(twin)})
    return models


def _optimizers(ours: torch.nn.Module, twin: torch.nn.Module, dev: torch.device) -> dict:
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


def _trainer(models: dict, optimizers: dict, key: str, loss_fn: Callable, amp) -> Callable[[], None]:
    """One optimiser step of `models[key]` on `loss_fn(model)`."""
    return functools.partial(_train_step, models[key], optimizers[key.split()[0]], loss_fn, amp)


# -- inference ------------------------------------------------------------------------------------------------------
def _infer(model: torch.nn.Module, x: torch.Tensor, amp) -> None:
    with torch.inference_mode(), amp:
        model(x)


def _measure_inference(b: Bench) -> list[dict]:
    for key in ("ours", "timm"):  # the compiled models share these modules
        b.models[key].eval()
    run = {k: _repeat(functools.partial(_infer, m, b.x, b.amp), b.steps) for k, m in b.models.items()}
    measured = paired_rates(run, len(b.x) * b.steps, b.rounds, 1, b.sync)
    return _report_pairs("inference", measured, b.compiled)


# -- train step -----------------------------------------------------------------------------------------------------
def _plain_loss(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    out = model(x)
    return sum(F.cross_entropy(o.float(), y) for o in (out if isinstance(out, tuple) else (out,)))


def _measure_train(b: Bench) -> list[dict]:
    loss_fn = functools.partial(_plain_loss, b.x, b.y)
    run = {k: _repeat(_trainer(b.models, b.optimizers, k, loss_fn, b.amp), b.steps) for k in b.models}
    measured = paired_rates(run, len(b.x) * b.steps, b.rounds, 1, b.sync)
    return _report_pairs("train step", measured, b.compiled)


# -- distilled step, teacher online and cached ----------------------------------------------------------------------
def _distillation(cfg: dict, dev: torch.device):
    """The preset's teacher, the distillation loss running it, and the loss taking its outputs from a cache."""
    from .distill import DistillationLoss
    from .teachers import Teacher, create_cnn

    cnn = create_cnn(cfg["teacher"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
    teacher = Teacher(cnn, cfg["teacher"], cfg["num_classes"]).to(dev)
    if dev.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
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


def _synthetic_cache(folder: str, cfg: dict, teacher, x: torch.Tensor, batches: int, amp):
    """A real cache on disk holding the teacher's outputs on `x` for `batches` batches of epoch 0; with each
    batch's positions (which are also its indices)."""
    from .distill.cache import TeacherCache

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


def _measure_distilled(b: Bench, distillation) -> list[dict]:
    """The official loop, ours with the teacher online and ours with it cached, in one set of rounds."""
    teacher, loss, cached_loss = distillation
    with tempfile.TemporaryDirectory() as folder:
        cache, positions = _synthetic_cache(folder, b.cfg, teacher, b.x, b.steps, b.amp)
        online = functools.partial(_online_loss, loss, b.x, b.y)
        from_cache = functools.partial(_cached_loss, cached_loss, cache, positions, itertools.count(), b.x, b.y)
        run = {
            "timm + teacher": _trainer(b.models, b.optimizers, b.baseline, online, b.amp),
            "ours + teacher": _trainer(b.models, b.optimizers, b.student, online, b.amp),
            "ours + cache": _trainer(b.models, b.optimizers, b.student, from_cache, b.amp),
        }
        run = {k: _repeat(fn, b.steps) for k, fn in run.items()}
        measured = paired_rates(run, len(b.x) * b.steps, b.rounds, 1, b.sync)
    result = _report("distilled step, teacher online", measured, "ours + teacher", "timm + teacher")
    result["cached_ratio"] = ratio(measured["times"], "ours + cache", "timm + teacher")
    print(f"{'distilled step, teacher cached':34s} ours + cache / timm + teacher: {result['cached_ratio']:.2f}x")
    return [result]


# -- data pipeline --------------------------------------------------------------------------------------------------
def view_transforms(size: int, in_chans: int) -> dict:
    """The training augmentation: ours and timm's per image; crop and flip per image with the rest per batch."""
    from timm.data import create_transform

    from .data.batch_aug import BatchAugment
    from .data.transforms import Recipe, crop_transform, keep_posterize_bits, train_transform

    mean, std = (0.5,) * in_chans, (0.25,) * in_chans
    ours_tf = train_transform(size, mean=mean, std=std)
    timm_tf = create_transform(
        size,
        is_training=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.25,
        color_jitter=0.3,
        interpolation="bicubic",
        mean=mean,
        std=std,
    )
    # (random erasing with timm's default fill, "const", cheaper than the recipe's per-pixel noise ours draws)
    keep_posterize_bits(timm_tf)  # as ours: this Pillow refuses timm's 0-bit posterize
    return {
        "ours": ours_tf,
        "timm": timm_tf,
        # --batch-aug: the loader decodes, crops and flips; RandAugment, erasing and normalisation run on the
        # batch, on the training device
        "crop": crop_transform(size, Recipe()),
        "batch": BatchAugment(size, mean=mean, std=std, recipe=Recipe(crop_scale=1.0, hflip=0.0), ratio=(1.0, 1.0)),
    }


def _jpeg_loader(jpegs: _Jpegs, transform, seeded: bool, *, bs: int, num_workers: int, dev: torch.device):
    """The JPEGs through `transform`: ours seeded per sample (replayable), timm's plainly shuffled."""
    from .data.sampling import SeededDataset, collate_batch, train_sampler

    dataset = _Jpegs(jpegs.blobs, jpegs.mode, transform)  # the same JPEGs, its own transform
    kwargs = dict(
        batch_size=bs,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        pin_memory=dev.type == "cuda",
    )
    if seeded:
        sampler = train_sampler(dataset, seed=0, rank=0, world_size=1, repeated_aug=False)
        return torch.utils.data.DataLoader(SeededDataset(dataset), sampler=sampler, collate_fn=collate_batch, **kwargs)
    return torch.utils.data.DataLoader(dataset, shuffle=True, **kwargs)


def _loader_pass(loader, dev: torch.device, augment) -> None:
    for step, (images, *_) in enumerate(loader):
        images = images.to(dev, non_blocking=True)
        if augment is not None:
            augment(images, step)
    _sync(dev)


def _measure_data(b: Bench, jpegs: _Jpegs, transforms: dict) -> list[dict]:
    bs, dev = b.batch_size, b.dev
    loader = functools.partial(_jpeg_loader, jpegs, bs=bs, num_workers=b.num_workers, dev=dev)
    run = {
        "ours": functools.partial(_loader_pass, loader(transforms["ours"], True), dev, None),
        "timm": functools.partial(_loader_pass, loader(transforms["timm"], False), dev, None),
        "ours, batch aug": functools.partial(_loader_pass, loader(transforms["crop"], True), dev, transforms["batch"]),
    }
    measured = paired_rates(run, (len(jpegs) // bs) * bs, b.rounds, 1, _no_sync)
    return [
        _report(f"data pipeline ({b.num_workers} workers)", measured, "ours", "timm"),
        _report(f"data pipeline, batch aug on {dev.type}", measured, "ours, batch aug", "timm"),
    ]


# -- end to end -----------------------------------------------------------------------------------------------------
def _distilled_pass(loader, model, opt, loss, amp, dev, augment=None, cache=None, spans=None, x=None) -> None:
    """One pass over `loader` training `model`; with `cache`, the teacher's outputs read from it (batch i at
    `spans[i]`, stored for the stand-in batch `x`)."""
    for step, (images, targets, *_) in enumerate(loader):
        images = images.to(dev, non_blocking=True)
        targets = targets.to(dev, non_blocking=True)
        if augment is not None:
            images = augment(images, step)
        with amp:
            out = model(images)
            if cache is not None:
                teacher_logits, _ = cache.lookup(0, spans[step], spans[step], x)
                total = loss.parts(images, out, targets, teacher_logits=teacher_logits)["loss"]
            else:
                total = loss.parts(images, out, targets)["loss"]
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(dev)


def _threads_for(fn: Callable[[], None], threads: int) -> None:
    """`fn` run with `threads` compute threads, the count restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn()
    finally:
        torch.set_num_threads(before)


def _measure_e2e(b: Bench, distillation, jpegs: _Jpegs, transforms: dict) -> list[dict]:
    """A whole distilled pass over the JPEGs: loader, augmentation, teacher (or its cache), student step.

    Baseline: the official loop (timm's transform in the loader processes, the teacher's forward every step). Ours
    as `deit train` runs: the teacher cached; the views augmented per image in the loader processes (its default)
    or, with --batch-aug, cropped there and augmented a batch at a time on the device; on the CPU with the compute
    threads `deit train` gives itself beside its loader processes (`distributed.share_cpu_cores`).
    """
    teacher, loss, cached_loss = distillation
    bs, dev, num_workers = b.batch_size, b.dev, b.num_workers
    batches = len(jpegs) // bs
    loader = functools.partial(_jpeg_loader, jpegs, bs=bs, num_workers=num_workers, dev=dev)
    threads = threads_beside(num_workers) if dev.type == "cpu" and num_workers else torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        cache, spans = _synthetic_cache(folder, b.cfg, teacher, b.x, batches, b.amp)
        official = loader(transforms["timm"], False), b.models["timm"], b.optimizers["timm"], loss, b.amp, dev
        ours = b.models[b.student], b.optimizers["ours"], cached_loss, b.amp, dev
        per_image = functools.partial(_distilled_pass, loader(transforms["ours"], True), *ours, None, cache, spans, b.x)
        batch_aug = functools.partial(
            _distilled_pass, loader(transforms["crop"], True), *ours, transforms["batch"], cache, spans, b.x
        )
        run = {
            "official loop": functools.partial(_distilled_pass, *official),
            "ours": functools.partial(_threads_for, per_image, threads),
            "ours, batch aug": functools.partial(_threads_for, batch_aug, threads),
        }
        measured = paired_rates(run, batches * bs, b.rounds, 1, _no_sync)
    results = [
        _report(f"end to end, distilled ({num_workers} workers)", measured, "ours", "official loop"),
        _report(f"end to end, distilled, batch aug on {dev.type}", measured, "ours, batch aug", "official loop"),
    ]
    for result in results:
        result["threads"] = {"official loop": torch.get_num_threads(), "ours": threads}
    return results


# -- the whole run --------------------------------------------------------------------------------------------------
def _start_record(cfg: dict, preset: str, dev: torch.device, bs: int, dtype, compiled: bool, rounds: int, steps: int):
    """The record's settings, with no results yet; printed as one line."""
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    print(
        f"{machine} | torch {torch.__version__} | batch {bs} | {precision}"
        f"{' | compiled' if compiled else ''} | {rounds} rounds of {steps} steps"
    )
    return {
        "machine": machine,
        "device": dev.type,
        "preset": preset,
        "student": cfg["student"],
        "teacher": cfg["teacher"],
        "batch_size": bs,
        "precision": precision,
        "compiled": compiled,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [],
    }


def run_benchmark(
    *,
    preset: str = "cpu",
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    rounds: int = 5,
    steps: int = 5,
    compile_models: bool = False,
    num_workers: int = 2,
    data_images: int = 512,
    parts: tuple[str, ...] = PARTS,
) -> dict:
    """Run the measurements; returns a record (machine, settings, one entry per measurement)."""
    from .distributed import amp_dtype, autocast
    from .models import create_model

    cfg = PRESETS[preset]
    dev = resolve_device(device, DistEnv())  # one line naming the fix when the device is absent
    bs = batch_size or cfg["batch_size"]
    dtype = amp_dtype(precision, dev)
    amp = autocast(dev, dtype)
    torch.manual_seed(0)
    ours = create_model(cfg["student"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"]).to(dev)
    twin = timm_twin(ours).to(dev)
    size = ours.hparams["img_size"]
    x = torch.randn(bs, cfg["in_chans"], size, size, device=dev)
    y = torch.randint(0, cfg["num_classes"], (bs,), device=dev)
    record = _start_record(cfg, preset, dev, bs, dtype, compile_models, rounds, steps)
    results = record["results"]
    models = _models(ours, twin, compile_models)
    b = Bench(cfg, dev, amp, bs, steps, rounds, num_workers, compile_models, x, y, models)
    if "inference" in parts:
        results += _measure_inference(b)
    if "train" in parts or "distilled" in parts or "e2e" in parts:
        ours.train(), twin.train()
        b.optimizers = _optimizers(ours, twin, dev)
    if "train" in parts:
        results += _measure_train(b)
    if "distilled" in parts or "e2e" in parts:
        distillation = _distillation(cfg, dev)
    if "distilled" in parts:
        results += _measure_distilled(b, distillation)
    if "data" in parts or "e2e" in parts:
        jpegs = jpeg_dataset(data_images, cfg["in_chans"], cfg["jpeg_size"])
        transforms = view_transforms(size, cfg["in_chans"])
    if "data" in parts:
        results += _measure_data(b, jpegs, transforms)
    if "e2e" in parts:
        results += _measure_e2e(b, distillation, jpegs, transforms)
    return record
