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
  against timm's transform, through a DataLoader with the given workers.

On CUDA: bf16 autocast. Random inputs; JPEGs are random-content images at ImageNet's typical size (500x375).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .distributed import DistEnv, cpu_name, resolve_device

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


def slug(text: str) -> str:
    """ "AMD EPYC, 2 cores" -> "amd-epyc-2-cores"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def save_record(record: dict, out_dir: str | Path) -> Path:
    """Write `record` as <out_dir>/<benchmark>_<machine>_<date>.json and say where."""
    out = Path(out_dir) / f"{record['benchmark']}_{slug(record['machine'])}_{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out}")
    return out


def timm_twin(ours: torch.nn.Module) -> torch.nn.Module:
    """timm's VisionTransformer (or its distilled variant) with our model's hyperparameters and weights."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    hp = dict(ours.hparams)
    cls = VisionTransformerDistilled if ours.num_prefix_tokens == 2 else VisionTransformer
    twin = cls(**{k: v for k, v in hp.items() if k != "drop_path_rate"}, drop_path_rate=hp.get("drop_path_rate", 0.0))
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

    class Jpegs(torch.utils.data.Dataset):
        transform = None

        def __len__(self):
            return len(blobs)

        def __getitem__(self, index):
            image = Image.open(io.BytesIO(blobs[index])).convert(mode)
            return self.transform(image), index % 10, 0

    return Jpegs()


def run_benchmark(
    *,
    preset: str = "cpu",
    device: str = "auto",
    batch_size: int | None = None,
    rounds: int = 5,
    steps: int = 5,
    compile_models: bool = False,
    num_workers: int = 2,
    data_images: int = 512,
    parts: tuple[str, ...] = ("inference", "train", "distilled", "data", "e2e"),
) -> dict:
    """Run the measurements; returns a record (machine, settings, one entry per measurement)."""
    from timm.optim import create_optimizer_v2

    from .data.batch_aug import BatchAugment
    from .data.transforms import _keep_posterize_bits, build_transform, crop_transform
    from .distill import DistillationLoss
    from .distill.cache import TeacherCache
    from .models import create_model
    from .teachers import Teacher, create_cnn

    cfg = PRESETS[preset]
    dev = resolve_device(device, DistEnv())  # one line naming the fix when the device is absent
    bs = batch_size or cfg["batch_size"]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.manual_seed(0)
    ours = create_model(cfg["student"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"]).to(dev)
    twin = timm_twin(ours).to(dev)
    size = ours.hparams["img_size"]
    x = torch.randn(bs, cfg["in_chans"], size, size, device=dev)
    y = torch.randint(0, cfg["num_classes"], (bs,), device=dev)
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    record = {
        "machine": machine,
        "device": dev.type,
        "preset": preset,
        "student": cfg["student"],
        "teacher": cfg["teacher"],
        "batch_size": bs,
        "compiled": compile_models,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [],
    }
    print(
        f"{machine} | torch {torch.__version__} | batch {bs} | {'bf16' if dev.type == 'cuda' else 'fp32'}"
        f"{' | compiled' if compile_models else ''} | {rounds} rounds of {steps} steps"
    )

    def report(name: str, measured: dict, ours_key: str, base_key: str) -> None:
        r = ratio(measured["times"], ours_key, base_key)
        line = "  ".join(f"{k} {v:,.0f} img/s" for k, v in measured["img_s"].items())
        print(f"{name:34s} {line}  | {ours_key} / {base_key}: {r:.2f}x")
        record["results"].append(
            {"measurement": name, "img_s": measured["img_s"], "ratio": r, "ours": ours_key, "baseline": base_key}
        )

    def repeat(fn):
        def run():
            for _ in range(steps):
                fn()

        return run

    models = {"ours": ours, "timm": twin}
    if compile_models:  # eager and compiled side by side: the compiled baseline is the one to beat
        models.update({"ours compiled": torch.compile(ours), "timm compiled": torch.compile(twin)})
    best = " compiled" if compile_models else ""

    def report_pairs(name: str, measured: dict) -> None:
        report(name, measured, "ours", "timm")
        if compile_models:
            report(name + ", compiled", measured, "ours compiled", "timm compiled")
            report(name + ", ours compiled vs timm eager", measured, "ours compiled", "timm")

    if "inference" in parts:

        def infer(model):
            def step():
                with torch.inference_mode(), amp:
                    model(x)

            return step

        for m in (ours, twin):
            m.eval()
        measured = paired_rates({k: repeat(infer(m)) for k, m in models.items()}, bs * steps, rounds, 1, sync)
        report_pairs("inference", measured)

    if "train" in parts or "distilled" in parts or "e2e" in parts:
        ours.train(), twin.train()
        fused = {"fused": True} if dev.type in ("cpu", "cuda") else {}
        optimizers = {
            "ours": create_optimizer_v2(ours, opt="adamw", lr=1e-4, weight_decay=0.05, **fused),
            "timm": create_optimizer_v2(twin, opt="adamw", lr=1e-4, weight_decay=0.05),
        }

        def train_step(key, loss_fn):
            model, opt = models[key], optimizers[key.split()[0]]

            def step():
                with amp:
                    loss = loss_fn(model)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            return step

        def plain(model):
            out = model(x)
            return sum(F.cross_entropy(o.float(), y) for o in (out if isinstance(out, tuple) else (out,)))

        if "train" in parts:
            measured = paired_rates({k: repeat(train_step(k, plain)) for k in models}, bs * steps, rounds, 1, sync)
            report_pairs("train step", measured)

    if "distilled" in parts or "e2e" in parts:
        cnn = create_cnn(cfg["teacher"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
        teacher = Teacher(cnn, cfg["teacher"], cfg["num_classes"]).to(dev)
        if dev.type == "cuda":
            teacher = teacher.to(memory_format=torch.channels_last)
        loss = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "hard", 0.5, 1.0)
        cached_loss = DistillationLoss(torch.nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0, cached=True)

    if "distilled" in parts:
        with tempfile.TemporaryDirectory() as folder:
            # a real cache on disk: the teacher's outputs for `steps` batches of one epoch
            cache = TeacherCache.open_or_create(folder, _bench_spec(cfg, bs, steps), create=True)
            positions = [torch.arange(i * bs, (i + 1) * bs) for i in range(steps)]
            with torch.inference_mode(), amp:
                logits = teacher(x)
            cache.write_epoch(0, 0, [cache.entries(p, p, x, logits, None) for p in positions])
            counter = iter(range(10**9))

            def online(model):
                return loss.parts(x, model(x), y)["loss"]

            def from_cache(model):
                i = next(counter) % steps
                teacher_logits, _ = cache.lookup(0, positions[i], positions[i], x, cfg["num_classes"])
                return cached_loss.parts(x, model(x), y, teacher_logits=teacher_logits)["loss"]

            measured = paired_rates(
                {
                    "timm + teacher": repeat(train_step("timm" + best, online)),
                    "ours + teacher": repeat(train_step("ours" + best, online)),
                    "ours + cache": repeat(train_step("ours" + best, from_cache)),
                },
                bs * steps,
                rounds,
                1,
                sync,
            )
            report("distilled step, teacher online", measured, "ours + teacher", "timm + teacher")
            record["results"][-1]["cached_ratio"] = ratio(measured["times"], "ours + cache", "timm + teacher")
            print(
                f"{'distilled step, teacher cached':34s} ours + cache / timm + teacher: "
                f"{record['results'][-1]['cached_ratio']:.2f}x"
            )

    if "data" in parts or "e2e" in parts:
        from timm.data import create_transform

        from .data.sampling import SeededDataset, train_sampler

        jpegs = jpeg_dataset(data_images, cfg["in_chans"], cfg["jpeg_size"])
        mean, std = (0.5,) * cfg["in_chans"], (0.25,) * cfg["in_chans"]
        ours_tf = build_transform(True, img_size=size, mean=mean, std=std)
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
        _keep_posterize_bits(timm_tf)  # as ours: this Pillow refuses timm's 0-bit posterize

        # --batch-aug: the loader decodes, crops and flips; RandAugment, erasing and normalisation run on the batch,
        # on the training device
        crop_tf = crop_transform(size, crop_scale=0.08, hflip=0.5, interpolation="bicubic")
        batch_tf = BatchAugment(size, mean=mean, std=std, crop_scale=1.0, ratio=(1.0, 1.0), hflip=0.0)

        def jpeg_loader(transform, seeded: bool):
            """The JPEGs through `transform`: ours seeded per sample (replayable), timm's plainly shuffled."""
            dataset = type(jpegs)()  # the same JPEGs, its own transform
            dataset.transform = transform
            kwargs = dict(
                batch_size=bs,
                num_workers=num_workers,
                drop_last=True,
                persistent_workers=num_workers > 0,
                pin_memory=dev.type == "cuda",
            )
            if seeded:
                sampler = train_sampler(dataset, seed=0, rank=0, world_size=1, repeated_aug=False)
                return torch.utils.data.DataLoader(SeededDataset(dataset), sampler=sampler, **kwargs)
            return torch.utils.data.DataLoader(dataset, shuffle=True, **kwargs)

        def loader_pass(transform, seeded: bool, augment=None):
            loader = jpeg_loader(transform, seeded)

            def run():
                for step, (images, *_) in enumerate(loader):
                    images = images.to(dev, non_blocking=True)
                    if augment is not None:
                        augment(images, step)
                sync()

            return run

        images = (data_images // bs) * bs
        if "data" in parts:
            measured = paired_rates(
                {
                    "ours": loader_pass(ours_tf, True),
                    "timm": loader_pass(timm_tf, False),
                    "ours, batch aug": loader_pass(crop_tf, True, batch_tf),
                },
                images,
                rounds,
                1,
                lambda: None,
            )
            report(f"data pipeline ({num_workers} workers)", measured, "ours", "timm")
            report(f"data pipeline, batch aug on {dev.type}", measured, "ours, batch aug", "timm")

    if "e2e" in parts:
        # a whole distilled pass over the JPEGs: loader, augmentation, teacher (or its cache), student step.
        # Ours: batch augmentation on the device, the teacher cached. Baseline: the official loop.
        batches = data_images // bs
        with tempfile.TemporaryDirectory() as folder:
            cache = TeacherCache.open_or_create(folder, _bench_spec(cfg, bs, batches), create=True)
            spans = [torch.arange(i * bs, (i + 1) * bs) for i in range(batches)]
            with torch.inference_mode(), amp:  # (the stored outputs are the stand-in batch's: timing is the point)
                logits = teacher(x)
            cache.write_epoch(0, 0, [cache.entries(p, p, x, logits, None) for p in spans])

            def pass_over(key: str, transform, seeded: bool, augment=None, cached: bool = False):
                loader = jpeg_loader(transform, seeded)
                model, opt = models[key], optimizers[key.split()[0]]

                def run():
                    for step, (images, targets, *_) in enumerate(loader):
                        images = images.to(dev, non_blocking=True)
                        targets = targets.to(dev, non_blocking=True)
                        if augment is not None:
                            images = augment(images, step)
                        with amp:
                            out = model(images)
                            if cached:
                                teacher_logits, _ = cache.lookup(0, spans[step], spans[step], x, cfg["num_classes"])
                                total = cached_loss.parts(images, out, targets, teacher_logits=teacher_logits)["loss"]
                            else:
                                total = loss.parts(images, out, targets)["loss"]
                        total.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    sync()

                return run

            measured = paired_rates(
                {
                    "official loop": pass_over("timm", timm_tf, False),
                    "ours": pass_over("ours" + best, crop_tf, True, batch_tf, cached=True),
                },
                images,
                rounds,
                1,
                lambda: None,
            )
            report(f"end to end, distilled ({num_workers} workers)", measured, "ours", "official loop")
    return record


def _bench_spec(cfg: dict, bs: int, steps: int) -> dict:
    """A cache description for the benchmark's synthetic cache."""
    return {
        "data": {"data_set": "random", "size": bs * steps},
        "views": {"seed": 0, "mixup": None, "repeated_aug": False, "batch_size": bs, "world_size": 1},
        "teacher": {"name": cfg["teacher"]},
        "attention": None,
        "epochs": 1,
        "topk": min(10, cfg["num_classes"]),
        "dtype": "float16",
        "distillation_type": "hard",
    }
