"""One training run: config -> data, model, teacher, optimizer, schedule, EMA, DDP -> epochs, checkpoints, logs.

Everything below `run` receives plain objects and numbers, not the config.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from .checkpoint import CHECKPOINT, RunFolder, load_training_state, resume_path
from .config import TrainConfig
from .data import build_dataset, build_transform, canonical_name, dataset_defaults
from .data.batch_aug import BatchAugment
from .data.datasets import ArrayDataset, collate_readable
from .data.sampling import (
    EvalBatches,
    SeededDataset,
    ShardSampler,
    TensorBatches,
    batch_seed,
    process_seed,
    seed_everything,
    train_sampler,
)
from .data.transforms import crop_transform
from .distill import AttentionDistillation, DistillationLoss
from .distill.attention import parse_layers
from .distill.cache import TeacherCache, targets_digest, weights_digest
from .engine import NonFiniteLoss, evaluate, fill_teacher_cache, train_one_epoch, unwrap
from .failures import first_line, loader_worker_init
from .files import FolderLock
from .models import MODELS, create_model, load_weights, read_checkpoint
from .models.weights import deit_config
from .teachers import create_cnn, load_teacher

log = logging.getLogger("deit")


def run(cfg: TrainConfig, cache_only: bool = False) -> dict:
    """Train (or, with cfg.run.eval, only evaluate) as the config says; returns the final summary.

    `cache_only`: make the run's teacher cache (cfg.distill.teacher_cache) and stop.
    """
    env, device = distributed.setup(cfg.run.device)
    threads = torch.get_num_threads()
    folder = None
    try:
        resume = resume_path(cfg.run.resume)
        if cache_only and not (cfg.distill.teacher_cache and cfg.distill.needs_teacher):
            raise ValueError(
                "a teacher cache needs --teacher-cache DIR, --teacher-path and a distillation type "
                "(--distillation-type hard/soft or --attn-distillation-weight)"
            )
        # a resumed run writes into the folder of its checkpoint unless told otherwise; the folder is the run's
        # own from here on (locked), before any work starts
        out = cfg.run.output_dir or (resume.parent if resume else None)
        if out and env.is_main and not cfg.run.eval and not cache_only:
            folder = RunFolder(out).open(resume)
        return _run(cfg, env, device, cache_only, folder, resume)
    finally:
        if folder is not None:
            folder.close()
        torch.set_num_threads(threads)  # a CPU run may have given cores to its loader processes
        distributed.cleanup()


def _run(
    cfg: TrainConfig,
    env: distributed.DistEnv,
    device: torch.device,
    cache_only: bool,
    folder: RunFolder | None,
    resume: Path | None,
) -> dict:
    cfg = cfg.with_defaults(dataset_defaults(cfg.data.data_set))
    amp_dtype = (
        torch.bfloat16
        if cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and device.type == "cuda")
        else None
    )

    # data
    data_set = canonical_name(cfg.data.data_set)
    train_set, info = build_dataset(
        data_set,
        cfg.data.data_path,
        True,
        grayscale=cfg.data.grayscale,
        labels_per_class=cfg.data.labels_per_class,
        unlabelled=cfg.data.unlabelled,
        intensity=cfg.data.intensity,
    )
    val_set, _ = build_dataset(
        data_set, cfg.data.data_path, False, grayscale=cfg.data.grayscale, intensity=cfg.data.intensity
    )
    world_batch = cfg.run.batch_size * env.world_size
    if len(train_set) * cfg.data.repeat < world_batch:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than one batch ({world_batch}); "
            "lower --batch-size or raise --repeat"
        )

    aug = cfg.aug
    in_memory = isinstance(train_set, ArrayDataset)
    # batch augmentation of images held in memory leaves a loader nothing to do: no worker processes then
    num_workers = 0 if aug.batch_aug and in_memory else cfg.data.num_workers
    if device.type == "cpu":
        distributed.share_cpu_cores(num_workers)
    # model: the same initial weights for a seed (and in every process)
    seed_everything(cfg.run.seed, cuda=device.type == "cuda")
    model, img_size = build_student(
        cfg.model.model,
        num_classes=info.num_classes,
        in_chans=info.in_chans,
        input_size=cfg.model.input_size,
        drop_path=cfg.model.drop_path,
        native_size=info.native_size,
    )
    if cfg.model.finetune:
        _finetune(model, cfg.model.finetune)
    augment = None
    if aug.batch_aug:
        # images in memory: the whole recipe on the batch. Image files: the loader processes decode, crop and flip
        # each image (under its own seed) to one size, and the batch gets the rest (RandAugment, erasing, ...).
        geometry = (
            {"crop_scale": aug.crop_scale, "hflip": aug.hflip}
            if in_memory
            else {"crop_scale": 1.0, "ratio": (1.0, 1.0), "hflip": 0.0}
        )
        augment = BatchAugment(
            img_size,
            mean=info.mean,
            std=info.std,
            color_jitter=aug.color_jitter,
            aa=aug.aa,
            interpolation=aug.train_interpolation,
            reprob=aug.reprob,
            remode=aug.remode,
            recount=aug.recount,
            **geometry,
        )
        if not in_memory:
            train_set.transform = crop_transform(
                img_size, crop_scale=aug.crop_scale, hflip=aug.hflip, interpolation=aug.train_interpolation
            )
    else:
        train_set.transform = build_transform(
            True,
            img_size=img_size,
            mean=info.mean,
            std=info.std,
            crop_scale=aug.crop_scale,
            hflip=aug.hflip,
            color_jitter=aug.color_jitter,
            aa=aug.aa,
            three_augment=aug.three_augment,
            interpolation=aug.train_interpolation,
            reprob=aug.reprob,
            remode=aug.remode,
            recount=aug.recount,
        )
    val_set.transform = build_transform(
        False,
        img_size=img_size,
        mean=info.mean,
        std=info.std,
        interpolation=aug.train_interpolation,
        eval_crop_ratio=aug.eval_crop_ratio,
    )
    sampler = train_sampler(
        train_set,
        seed=cfg.run.seed,
        rank=env.rank,
        world_size=env.world_size,
        repeated_aug=aug.repeated_aug,
        repeat=cfg.data.repeat,
    )
    loader_args = dict(
        num_workers=num_workers,
        pin_memory=cfg.data.pin_mem and device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=loader_worker_init,
    )
    if augment is not None and in_memory:
        train_loader = TensorBatches(train_set.tensor(), train_set.targets, sampler, cfg.run.batch_size)
    else:
        train_loader = DataLoader(
            SeededDataset(train_set), batch_size=cfg.run.batch_size, sampler=sampler, drop_last=True, **loader_args
        )
    eval_batch = max(2 * cfg.run.batch_size, 128)
    if in_memory and aug.eval_crop_ratio == 1.0 and val_set.images.shape[1:3] == (img_size, img_size):
        # already at the model's size: evaluation only converts and normalises, a batch at a time
        val_loader = EvalBatches(
            val_set.tensor(),
            val_set.targets,
            mean=info.mean,
            std=info.std,
            batch_size=eval_batch,
            rank=env.rank,
            world_size=env.world_size,
        )
    else:
        val_loader = DataLoader(
            val_set,
            batch_size=eval_batch,
            sampler=ShardSampler(len(val_set), env.rank, env.world_size),
            collate_fn=collate_readable,
            **loader_args,
        )

    # teacher and loss
    distill = cfg.distill
    teacher = attention = None
    if distill.needs_teacher and (distill.teacher_path or not distill.teacher_cache):
        teacher = load_teacher(
            distill.teacher_model, distill.teacher_path, num_classes=info.num_classes, in_chans=info.in_chans
        ).to(device)
    if distill.attn_distillation_weight > 0:
        attention = AttentionDistillation.for_student(
            model,
            distill.attn_distillation_weight,
            parse_layers(distill.attn_distillation_layers),
            distill.attn_distillation_loss,
        )
    if distill.distillation_type == "none" and getattr(model, "num_prefix_tokens", 1) == 2:
        raise ValueError(
            f"{cfg.model.model} has a distillation head that learns only from a teacher: give "
            "--distillation-type hard (or soft) with --teacher-path, or train the model without "
            "'_distilled'"
        )
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    mixup_fn = None
    if aug.mixup_active:
        mixup_fn = Mixup(
            mixup_alpha=aug.mixup,
            cutmix_alpha=aug.cutmix,
            prob=aug.mixup_prob,
            switch_prob=aug.mixup_switch_prob,
            mode=aug.mixup_mode,
            label_smoothing=aug.smoothing,
            num_classes=info.num_classes,
        )
        base = SoftTargetCrossEntropy()
    elif aug.smoothing > 0:
        base = LabelSmoothingCrossEntropy(aug.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    criterion = DistillationLoss(
        base,
        teacher,
        distill.distillation_type,
        distill.distillation_alpha,
        distill.distillation_tau,
        attention,
        cached=bool(distill.teacher_cache),
    )

    def mix_seed(epoch: int):
        return lambda step: batch_seed(cfg.run.seed, epoch, env.rank, step)

    cache = None
    if distill.teacher_cache and distill.needs_teacher and not cfg.run.eval:
        spec = cache_spec(cfg, train_set, info.num_classes, teacher, attention, env.world_size, augment, img_size)
        cache = _open_cache(distill.teacher_cache, spec, env, can_fill=teacher is not None)
        # Mixup and batch augmentation draw per batch: then the teacher sees the training batches; else larger ones
        fill_loader = (
            train_loader
            if mixup_fn or augment
            else DataLoader(
                SeededDataset(train_set), batch_size=max(cfg.run.batch_size, 256), sampler=sampler, **loader_args
            )
        )
        missing = cache.missing_epochs(env.rank, cfg.run.epochs)
        # the main process owns the cache folder while the epochs are made (each process writes its own files)
        owns = ("epoch_*.safetensors", "meta.json")
        with (
            FolderLock(cache.root, "deit cache-teacher", owns) if missing and env.is_main else contextlib.nullcontext()
        ):
            for epoch in missing:
                seed_everything(process_seed(cfg.run.seed, epoch, env.rank), cuda=device.type == "cuda")
                sampler.set_epoch(epoch)
                fill_teacher_cache(
                    criterion,
                    fill_loader,
                    cache,
                    epoch=epoch,
                    rank=env.rank,
                    device=device,
                    mixup_fn=mixup_fn,
                    mix_seed=mix_seed(epoch),
                    amp_dtype=amp_dtype,
                    show_progress=env.is_main,
                    augment=augment,
                )
        del fill_loader
        distributed.barrier()
        if cache_only:
            return {"teacher_cache": str(cache.root), "epochs": cfg.run.epochs, "filled": len(missing)}
        criterion.teacher = teacher = None  # the cache speaks for it now

    # optimisation
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    model.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optim = cfg.optim
    total_batch = world_batch * optim.accum_iter
    lr = optim.lr if optim.unscale_lr else optim.lr * total_batch / 512  # the paper's linear scaling rule
    # torch's fused Adam/AdamW kernel: one pass over all tensors (on this CPU, 6x faster than the per-tensor loop)
    fused = {"fused": True} if optim.opt.lower() in ("adam", "adamw") and device.type in ("cpu", "cuda") else {}
    optimizer = create_optimizer_v2(
        model,
        opt=optim.opt,
        lr=lr,
        weight_decay=optim.weight_decay,
        momentum=optim.momentum,
        eps=optim.opt_eps,
        **fused,
    )
    steps_per_epoch = math.ceil(len(train_loader) / optim.accum_iter)
    lr_schedule = CosineLRScheduler(
        optimizer,
        t_initial=cfg.run.epochs * steps_per_epoch,
        lr_min=optim.min_lr,
        warmup_t=round(optim.warmup_epochs * steps_per_epoch),
        warmup_lr_init=optim.warmup_lr,
        t_in_epochs=False,
    )
    ema = ModelEmaV3(model, decay=optim.model_ema_decay) if optim.model_ema else None

    description = model_description(
        model, info, img_size, aug.eval_crop_ratio, aug.train_interpolation, cfg.data.intensity
    )
    start_epoch, num_updates = 0, 0
    if resume is not None:
        start_epoch, num_updates = _load_resume(resume, model, optimizer, ema, description)
        lr_schedule.step_update(num_updates)

    train_model = model
    if env.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.run.compile:
        train_model = torch.compile(train_model)
    show = env.is_main

    if cfg.run.eval:
        stats = evaluate(train_model, val_loader, device=device, amp_dtype=amp_dtype, show_progress=show)
        if show:
            print(
                f"{len(val_set)} images: top-1 {stats['acc1']:.2f}%  top-5 {stats['acc5']:.2f}%  "
                f"loss {stats['loss']:.4f}"
            )
        return stats

    if folder is not None:
        resolved = cfg.to_dict()
        resolved["run"]["output_dir"] = str(folder.path)
        folder.start(resolved, start_epoch, resume)
    writer = _tensorboard(folder.path) if cfg.run.tensorboard and folder is not None else None
    if show:
        methods = [distill.distillation_type] if distill.distillation_type != "none" else []
        methods += [f"attention x{distill.attn_distillation_weight:g}"] if attention else []
        source = f"{cache.meta['teacher']['name']} (cached in {cache.root})" if cache else getattr(teacher, "name", "")
        resized = cache.meta["teacher"].get("input_size") if cache else teacher and teacher.resizes(img_size)
        if resized:
            source += f", which sees the views resized to its own {resized} px"
        teacher_note = f", distillation {' + '.join(methods)} from {source}" if methods else ""
        labelled = sum(t >= 0 for t in train_set.targets)
        images = f"{len(train_set)} images" + (f" ({labelled} labelled)" if labelled < len(train_set) else "")
        images += f", each {cfg.data.repeat} times an epoch" if cfg.data.repeat > 1 else ""
        print(
            f"training {cfg.model.model} ({n_parameters / 1e6:.2f}M parameters) on {data_set}: {images}, "
            f"{info.num_classes} classes, {img_size} px, {cfg.run.epochs} epochs, total batch "
            f"{total_batch}, lr {lr:.2e}, {env.world_size} process(es) on {device.type}{teacher_note}"
        )

    summary = {}
    for epoch in range(start_epoch, cfg.run.epochs):
        # Mixup and drop path draw from these: seeded from the epoch, a resumed run repeats them
        seed_everything(process_seed(cfg.run.seed, epoch, env.rank), cuda=device.type == "cuda")
        sampler.set_epoch(epoch)
        try:
            stats, num_updates = train_one_epoch(
                train_model,
                criterion,
                train_loader,
                optimizer,
                device=device,
                epoch=epoch,
                num_updates=num_updates,
                mixup_fn=mixup_fn,
                lr_schedule=lr_schedule,
                ema=ema,
                amp_dtype=amp_dtype,
                accum_iter=optim.accum_iter,
                clip_grad=optim.clip_grad,
                show_progress=show,
                world_size=env.world_size,
                mix_seed=mix_seed(epoch),
                teacher_cache=cache,
                num_classes=info.num_classes,
                augment=augment,
            )
        except NonFiniteLoss as e:
            raise NonFiniteLoss(
                f"{e}: training stopped; {_what_is_kept(folder, epoch)}; lower --lr, or set --clip-grad 1.0"
            ) from None
        test = evaluate(train_model, val_loader, device=device, amp_dtype=amp_dtype)
        line = {
            "epoch": epoch,
            **stats,
            "test_acc1": test["acc1"],
            "test_acc5": test["acc5"],
            "test_loss": test["loss"],
        }
        if ema is not None:
            line["ema_acc1"] = evaluate(ema.module, val_loader, device=device, amp_dtype=amp_dtype)["acc1"]
        line["n_parameters"] = n_parameters
        if folder is not None:
            folder.save_epoch(line, _training_state(model, optimizer, ema, epoch, num_updates, cfg, description))
            if writer is not None:
                for key, value in line.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, epoch)
                writer.flush()
        if show:
            ema_note = f"  ema top-1 {line['ema_acc1']:.2f}%" if ema is not None else ""
            skipped = f"  ({stats['skipped_images']} unreadable images skipped)" if stats["skipped_images"] else ""
            print(
                f"epoch {epoch}: loss {stats['train_loss']:.4f}  top-1 {test['acc1']:.2f}%  top-5 {test['acc5']:.2f}%"
                f"{ema_note}  {stats['images_per_s']:,.0f} img/s{skipped}"
            )
        summary = line
    if writer is not None:
        writer.close()
    return summary


def cache_spec(
    cfg: TrainConfig,
    train_set,
    num_classes: int,
    teacher,
    attention,
    world_size: int,
    augment=None,
    img_size: int | None = None,
) -> dict:
    """What a teacher cache must have been made for to serve this run (see `distill/cache.py`)."""
    aug = cfg.aug
    teacher_spec = {"weights": None}  # no teacher weights given: the cache's are trusted
    if teacher is not None:
        teacher_spec = {"name": teacher.name, "weights": weights_digest(teacher.model)}
        resized = teacher.resizes(img_size)
        if resized:  # the views were resized for it
            teacher_spec["input_size"] = resized
    transform = [t for t in (train_set.transform, augment) if t is not None]
    mixup = None
    if aug.mixup_active:
        mixup = {
            "mixup": aug.mixup,
            "cutmix": aug.cutmix,
            "prob": aug.mixup_prob,
            "switch_prob": aug.mixup_switch_prob,
            "mode": aug.mixup_mode,
        }
    return {
        "data": {
            "data_set": canonical_name(cfg.data.data_set),
            "size": len(train_set),
            "num_classes": num_classes,
            "targets": targets_digest(train_set.targets),
            **({"repeat": cfg.data.repeat} if cfg.data.repeat > 1 else {}),
        },
        "views": {
            "seed": cfg.run.seed,
            "transform": [line.strip() for t in transform for line in repr(t).splitlines()],
            "mixup": mixup,
            "batch_aug": augment is not None,
            "repeated_aug": aug.repeated_aug and world_size > 1,
            "batch_size": cfg.run.batch_size,
            "world_size": world_size,
        },
        "teacher": teacher_spec,
        "attention": {"layers": list(attention.layers), "grid": attention.grid, "heads": attention.heads}
        if attention
        else None,
        "epochs": cfg.run.epochs,
        "topk": min(cfg.distill.teacher_cache_topk, num_classes),
        "dtype": cfg.distill.teacher_cache_dtype,
        "distillation_type": cfg.distill.distillation_type,
    }


def _open_cache(folder: str, spec: dict, env: distributed.DistEnv, can_fill: bool) -> TeacherCache:
    """The run's teacher cache: the main process creates it if absent; every process checks it fits the run and
    that its own missing epochs can be filled (a teacher is at hand)."""
    cache = TeacherCache.open_or_create(folder, spec, create=can_fill) if env.is_main else None
    distributed.barrier()
    if cache is None:
        cache = TeacherCache.open_or_create(folder, spec, create=False)
    missing = cache.missing_epochs(env.rank, spec["epochs"])
    if missing and not can_fill:
        raise ValueError(f"teacher cache {folder} lacks epoch {missing[0]}: give --teacher-path to finish it")
    if missing and env.is_main:
        print(f"teacher cache {folder}: running {spec['teacher']['name']} on {len(missing)} epoch(s) of views")
    return cache


def build_student(
    name: str, *, num_classes: int, in_chans: int, input_size: int | None, drop_path: float, native_size: int | None
) -> tuple[nn.Module, int]:
    """A DeiT by registered name, else a CNN (our small one, timm's or torchvision's); and its input size."""
    if name in MODELS:
        kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
        if input_size is not None:
            kwargs["img_size"] = input_size
        model = create_model(name, **kwargs)
        return model, model.hparams["img_size"]
    return create_cnn(name, num_classes=num_classes, in_chans=in_chans), input_size or native_size or 224


def model_description(
    model: nn.Module, info, img_size: int, crop_ratio: float, interpolation: str, intensity: str = "minmax"
) -> dict:
    """What rebuilds the model and prepares its inputs: saved in every checkpoint."""
    description = dict(getattr(model, "arch_config", None) or deit_config(model))
    description["data"] = {
        "class_names": list(info.class_names),
        "mean": list(info.mean),
        "std": list(info.std),
        "input_size": img_size,
        "eval_crop_ratio": crop_ratio,
        "interpolation": interpolation,
        "intensity": intensity,
    }
    return description


def _finetune(model: nn.Module, path: str) -> None:
    if hasattr(model, "pos_embed"):
        load_weights(model, path)  # pos_embed resized, a head of another class count replaced
        return
    sd = read_checkpoint(path).state_dict
    own = model.state_dict()
    fitting = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < len(own) // 2:
        raise ValueError(f"{path} does not fit this model: only {len(fitting)} of {len(own)} tensors match")
    model.load_state_dict(fitting, strict=False)
    left = [k for k in own if k not in fitting]
    if left:
        log.warning(f"{path}: {len(left)} tensors left at their initialisation ({', '.join(left[:4])})")


def saved_config(resume: str) -> dict:
    """The configuration a checkpoint's run was started with (where it wrote and what it resumed left out: a
    resumed run writes into the folder it resumes)."""
    config = load_training_state(resume_path(resume))["config"]
    run = config.get("run")
    if isinstance(run, dict):
        config = {**config, "run": {k: v for k, v in run.items() if k not in ("output_dir", "resume")}}
    return config


def _training_state(model, optimizer, ema, epoch: int, num_updates: int, cfg: TrainConfig, description: dict) -> dict:
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_ema": ema.module.state_dict() if ema is not None else None,
        "epoch": epoch,
        "num_updates": num_updates,
        "config": cfg.to_dict(),
        "deit_config": description,
    }


def _load_resume(path: Path, model, optimizer, ema, description: dict) -> tuple[int, int]:
    state = load_training_state(path)
    theirs = state["deit_config"]
    same = {k: v for k, v in theirs.items() if k != "data"} == {k: v for k, v in description.items() if k != "data"}
    if not same:
        raise ValueError(
            f"{path} was written by a run of {theirs.get('model')} {theirs.get('hparams')}, but this run trains "
            f"{description.get('model')} {description.get('hparams')}; resume with the same model and data, or "
            "start from its weights with --finetune"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["model_ema"] if state.get("model_ema") is not None else state["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} does not fit this run ({first_line(e)}); "
            "resume with the run's own settings, or start from its weights with --finetune"
        ) from None
    log.info(f"resuming after epoch {state['epoch']} from {path}")
    return state["epoch"] + 1, state["num_updates"]


def _what_is_kept(folder: RunFolder | None, epoch: int) -> str:
    if folder is None:
        return "nothing was saved (no --output_dir)"
    if not (folder.path / CHECKPOINT).exists():
        return f"no checkpoint was written in {folder.path} yet"
    return f"the checkpoint of epoch {epoch - 1} in {folder.path} is kept: --resume {folder.path} to continue"


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))
