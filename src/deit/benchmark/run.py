"""`deit benchmark`'s run: the presets, the parts asked for, one record."""

from __future__ import annotations

import torch

from ..distributed import DistEnv, cpu_name, resolve_device
from .pipeline import jpeg_dataset, measure_data, measure_e2e, view_transforms
from .steps import (
    compared_models,
    compared_optimizers,
    distillation_parts,
    measure_distilled,
    measure_inference,
    measure_train,
    timm_twin,
)
from .timing import Bench

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
    from ..distributed import amp_dtype, autocast
    from ..models import create_model

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
    models = compared_models(ours, twin, compile_models)
    b = Bench(cfg, dev, amp, bs, steps, rounds, num_workers, compile_models, x, y, models)
    if "inference" in parts:
        results += measure_inference(b)
    if "train" in parts or "distilled" in parts or "e2e" in parts:
        ours.train(), twin.train()
        b.optimizers = compared_optimizers(ours, twin, dev)
    if "train" in parts:
        results += measure_train(b)
    if "distilled" in parts or "e2e" in parts:
        distillation = distillation_parts(cfg, dev)
    if "distilled" in parts:
        results += measure_distilled(b, distillation)
    if "data" in parts or "e2e" in parts:
        jpegs = jpeg_dataset(data_images, cfg["in_chans"], cfg["jpeg_size"])
        transforms = view_transforms(size, cfg["in_chans"], dev)
    if "data" in parts:
        results += measure_data(b, jpegs, transforms)
    if "e2e" in parts:
        results += measure_e2e(b, distillation, jpegs, transforms)
    return record
