"""One training run: the config read once, each piece built by the module that owns it, then the epochs.

`run` trains, `evaluate_only` evaluates the weights a run starts from (`--eval`), `make_teacher_cache` runs the
teacher over a run's views and stops (`deit cache-teacher`). The functions of this file read the config; nothing
they call receives it: the builders take plain objects and numbers.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from . import distributed
from .caching import fill_cache
from .checkpoint import RunFolder, resume_path, resume_training, training_state, what_is_kept
from .config import TrainConfig
from .data import DataInfo, build_dataset, canonical_name, dataset_defaults
from .data.loaders import (
    eval_loader,
    input_path,
    loader_options,
    train_loader,
    training_order,
    training_views,
    worker_count,
)
from .data.sampling import batch_seed, process_seed, seed_everything
from .data.transforms import mixup_cutmix
from .distill import AttentionDistillation, DistillationLoss
from .distill.attention import parse_blocks
from .distill.cache import TeacherCache
from .distill.losses import class_criterion
from .engine import NonFiniteLoss, Views, evaluate, train_one_epoch
from .models.weights import deit_config
from .optim import Updates, build_optimizer, cosine_schedule, weight_ema
from .pieces import Pieces
from .students import build_student, finetune
from .teachers import Teacher, load_teacher

log = logging.getLogger("deit")


def run(cfg: TrainConfig) -> dict:
    """Train as the config says; returns the last epoch's log line."""
    if cfg.run.eval:
        raise ValueError("run.eval is set: evaluate with evaluate_only(cfg), or unset run.eval to train")
    with _session(cfg, owns_folder=True) as (env, device, folder, resume):
        pieces = _build(cfg, env, device)
        cache = None
        if pieces.cfg.distill.teacher_cache and pieces.cfg.distill.needs_teacher:
            cache, _ = fill_cache(pieces)
            pieces.criterion.teacher = pieces.teacher = None  # the cache speaks for it now
        return _train(pieces, folder, resume, cache)


def evaluate_only(cfg: TrainConfig) -> dict:
    """Evaluate the weights the run starts from (--finetune or --resume); returns top-1, top-5 and the loss."""
    with _session(cfg, owns_folder=False) as (env, device, _, resume):
        pieces = _build(cfg, env, device)
        model = pieces.model.to(device)
        if resume is not None:
            resume_training(resume, model, _updates(pieces), _deit_config(pieces))
        stats = evaluate(
            _wrap(model, pieces),
            pieces.val_loader,
            device=device,
            amp_dtype=pieces.amp_dtype,
            show_progress=env.is_main,
        )
        if env.is_main:
            print(
                f"{len(pieces.val_set)} images: top-1 {stats['acc1']:.2f}%  top-5 {stats['acc5']:.2f}%  "
                f"loss {stats['loss']:.4f}"
            )
        return stats


def make_teacher_cache(cfg: TrainConfig) -> dict:
    """Make (or finish) the run's teacher cache and stop: {"teacher_cache": folder, "epochs", "filled": epochs made}."""
    distill = cfg.distill
    if not (distill.teacher_cache and distill.needs_teacher):
        raise ValueError(
            "a teacher cache needs --teacher-cache DIR, --teacher-path and a distillation type "
            "(--distillation-type hard/soft or --attn-distillation-weight)"
        )
    with _session(cfg, owns_folder=False) as (env, device, _, _):
        cache, filled = fill_cache(_build(cfg, env, device))
        return {"teacher_cache": str(cache.root), "epochs": cfg.run.epochs, "filled": filled}


@contextlib.contextmanager
def _session(cfg: TrainConfig, owns_folder: bool):
    """The process group and device; with `owns_folder`, the run's folder, locked for the run (a resumed run writes
    into the folder of its checkpoint unless told otherwise), before any work starts."""
    env, device = distributed.setup(cfg.run.device)
    threads = torch.get_num_threads()
    folder = None
    try:
        resume = resume_path(cfg.run.resume)
        out = cfg.run.output_dir or (resume.parent if resume else None)
        if out and env.is_main and owns_folder:
            folder = RunFolder(out).open(resume)
        yield env, device, folder, resume
    finally:
        if folder is not None:
            folder.close()
        torch.set_num_threads(threads)  # a CPU run may have given cores to its loader processes
        distributed.cleanup()


def _datasets(cfg: TrainConfig, world_size: int) -> tuple[Dataset, Dataset, DataInfo]:
    """The training and validation splits, and what a model needs to know of the data."""
    data = cfg.data
    name = canonical_name(data.data_set)
    common = dict(grayscale=data.grayscale, intensity=data.intensity)
    train_set, info = build_dataset(
        name, data.data_path, True, labels_per_class=data.labels_per_class, unlabelled=data.unlabelled, **common
    )
    val_path = data.data_path
    if name == "wds":
        from .data.shards.streams import val_source

        val_path = data.val_path or val_source(data.data_path)
    val_set, val_info = build_dataset(name, val_path, False, **common)
    if name == "wds" and val_info.class_names != info.class_names:
        if not val_set.split.counted or val_info.num_classes > info.num_classes:
            raise ValueError(
                f"the validation shards ({val_set.split.where}) have classes {val_info.class_names[:3]}..., the "
                f"training shards {info.class_names[:3]}...: give shards of the same classes"
            )
        val_set.class_names = info.class_names  # counted shards have class indices only: the training set's names
    world_batch = cfg.run.batch_size * world_size
    if len(train_set) * data.repeat < world_batch:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than one batch ({world_batch}); "
            "lower --batch-size or raise --repeat"
        )
    return train_set, val_set, info


def _mixup(cfg: TrainConfig, num_classes: int):
    """timm's Mixup/CutMix when the recipe mixes batches, else None."""
    settings = cfg.aug.mixup_settings()
    return None if settings is None else mixup_cutmix(**settings, smoothing=cfg.aug.smoothing, num_classes=num_classes)


def _build(cfg: TrainConfig, env: distributed.DistEnv, device: torch.device) -> Pieces:
    cfg = cfg.with_defaults(dataset_defaults(cfg.data.data_set))
    data, aug = cfg.data, cfg.aug
    train_set, val_set, info = _datasets(cfg, env.world_size)
    num_workers = worker_count(train_set, aug.batch_aug, data.num_workers)
    if device.type == "cpu":
        distributed.share_cpu_cores(num_workers)
    seed_everything(cfg.run.seed, cuda=device.type == "cuda")  # the same initial weights for a seed, in every process
    model, img_size = _student(cfg, info)

    norm = dict(mean=info.mean, std=info.std)
    path = input_path(train_set, aug.batch_aug, data.input_path, device)
    augment, decode = training_views(
        train_set,
        aug.recipe(),
        img_size=img_size,
        batch_aug=aug.batch_aug,
        path=path,
        device=device,
        jpeg_draft=data.jpeg_draft,
        **norm,
    )
    sampler = training_order(
        train_set,
        seed=cfg.run.seed,
        rank=env.rank,
        world_size=env.world_size,
        repeated_aug=aug.repeated_aug,
        repeat=data.repeat,
        shuffle_buffer=data.shuffle_buffer,
    )
    options = loader_options(num_workers, pin_memory=data.pin_mem and device.type == "cuda")
    mixup = _mixup(cfg, info.num_classes)
    teacher, criterion = _criterion(cfg, model, info, device, mixup is not None)
    return Pieces(
        cfg=cfg,
        env=env,
        device=device,
        amp_dtype=distributed.amp_dtype(cfg.run.precision, device),
        train_set=train_set,
        val_set=val_set,
        info=info,
        model=model,
        img_size=img_size,
        sampler=sampler,
        train_loader=train_loader(
            train_set, sampler, batch_size=cfg.run.batch_size, batch_aug=aug.batch_aug, options=options
        ),
        val_loader=_val_loader(cfg, env, val_set, img_size, options, norm, path, device),
        # every batch's augmentation and Mixup draw from (seed, epoch, process, step): a resumed run repeats them
        views=Views(
            device,
            augment,
            mixup,
            seed=lambda epoch, step: batch_seed(cfg.run.seed, epoch, env.rank, step),
            decode=decode,
        ),
        input_path=path,
        options=options,
        teacher=teacher,
        criterion=criterion,
    )


def _student(cfg: TrainConfig, info) -> tuple[nn.Module, int]:
    """The model to train, sized to the data (classes, channels, the images' own size for a CNN), and its input size."""
    model, img_size = build_student(
        cfg.model.model,
        num_classes=info.num_classes,
        in_chans=info.in_chans,
        input_size=cfg.model.input_size,
        drop_path=cfg.model.drop_path,
        native_size=info.native_size,
        layer_scale_init=cfg.model.layer_scale_init,
    )
    if cfg.model.finetune:
        finetune(model, cfg.model.finetune)
    return model, img_size


def _val_loader(
    cfg: TrainConfig, env: distributed.DistEnv, val_set, img_size: int, options: dict, norm: dict, path, device
):
    """The evaluation batches: the whole validation split, each process its share, at twice the training batch;
    on the device input path, decoded and prepared on the device."""
    return eval_loader(
        val_set,
        img_size=img_size,
        interpolation=cfg.aug.train_interpolation,
        crop_ratio=cfg.aug.eval_crop_ratio,
        batch_size=max(2 * cfg.run.batch_size, 128),
        rank=env.rank,
        world_size=env.world_size,
        options=options,
        path="device" if path == "device" else "loader",
        device=device,
        **norm,
    )


def _criterion(
    cfg: TrainConfig, model: nn.Module, info, device: torch.device, mixed: bool
) -> tuple[Teacher | None, DistillationLoss]:
    """The teacher (unless a teacher cache replaces it) and the loss."""
    distill = cfg.distill
    if distill.distillation_type == "none" and getattr(model, "distilled", False):
        raise ValueError(
            f"{cfg.model.model} has a distillation head that learns only from a teacher: give "
            "--distillation-type hard (or soft) with --teacher-path, or train the model without '_distilled'"
        )
    teacher = attention = None
    if distill.needs_teacher and (distill.teacher_path or not distill.teacher_cache):
        teacher = load_teacher(
            distill.teacher_model, distill.teacher_path, num_classes=info.num_classes, in_chans=info.in_chans
        ).to(device)
    if distill.attn_distillation_weight > 0:
        attention = AttentionDistillation.for_student(
            model,
            distill.attn_distillation_weight,
            parse_blocks(distill.attn_distillation_layers),
            distill.attn_distillation_loss,
        )
    criterion = DistillationLoss(
        class_criterion(mixup=mixed, smoothing=cfg.aug.smoothing, bce=cfg.aug.bce_loss),
        teacher,
        distill.distillation_type,
        distill.distillation_alpha,
        distill.distillation_tau,
        attention,
        cached=bool(distill.teacher_cache),
    )
    return teacher, criterion


def _total_batch(p: Pieces) -> int:
    return p.cfg.run.batch_size * p.env.world_size * p.cfg.optim.accum_iter


def _lr(p: Pieces) -> float:
    """The learning rate: the paper's linear scaling rule, lr x total batch / 512, unless unscale_lr."""
    optim = p.cfg.optim
    return optim.lr if optim.unscale_lr else optim.lr * _total_batch(p) / 512


def _updates(p: Pieces) -> Updates:
    optim = p.cfg.optim
    optimizer = build_optimizer(
        p.model,
        opt=optim.opt,
        lr=_lr(p),
        weight_decay=optim.weight_decay,
        momentum=optim.momentum,
        eps=optim.opt_eps,
        device=p.device,
    )
    steps_per_epoch = math.ceil(len(p.train_loader) / optim.accum_iter)
    schedule = cosine_schedule(
        optimizer,
        steps=p.cfg.run.epochs * steps_per_epoch,
        warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
        warmup_lr=optim.warmup_lr,
        min_lr=optim.min_lr,
    )
    ema = weight_ema(p.model, optim.model_ema_decay) if optim.model_ema else None
    return Updates(optimizer, schedule, ema, accum_iter=optim.accum_iter, clip_grad=optim.clip_grad)


def _deit_config(p: Pieces) -> dict:
    """What rebuilds the model and prepares its inputs: saved in every checkpoint."""
    aug = p.cfg.aug
    data = {
        "class_names": list(p.info.class_names),
        "mean": list(p.info.mean),
        "std": list(p.info.std),
        "input_size": p.img_size,
        "eval_crop_ratio": aug.eval_crop_ratio,
        "interpolation": aug.train_interpolation,
        "intensity": p.cfg.data.intensity,
    }
    return deit_config(p.model, data)


def _wrap(model: nn.Module, p: Pieces) -> nn.Module:
    """The model as it is run: under DDP with several processes, compiled when asked."""
    if p.env.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[p.device.index] if p.device.type == "cuda" else None
        )
    return torch.compile(model) if p.cfg.run.compile else model


def _train(p: Pieces, folder: RunFolder | None, resume: Path | None, cache: TeacherCache | None) -> dict:
    cfg, env, device = p.cfg, p.env, p.device
    model = p.model.to(device)
    n_parameters = sum(param.numel() for param in model.parameters() if param.requires_grad)
    updates = _updates(p)
    config = _deit_config(p)
    start_epoch = resume_training(resume, model, updates, config) if resume is not None else 0
    train_model = _wrap(model, p)
    if folder is not None:
        resolved = cfg.to_dict()
        resolved["run"]["output_dir"] = str(folder.path)
        folder.start(resolved, start_epoch, resume)
    writer = _tensorboard(folder.path) if cfg.run.tensorboard and folder is not None else None
    if env.is_main:
        print(_announcement(p, cache, n_parameters))
    line = {}
    for epoch in range(start_epoch, cfg.run.epochs):
        # Mixup and drop path draw from these: seeded from the epoch, a resumed run repeats them
        seed_everything(process_seed(cfg.run.seed, epoch, env.rank), cuda=device.type == "cuda")
        p.sampler.set_epoch(epoch)
        try:
            stats = train_one_epoch(
                train_model,
                p.criterion,
                p.train_loader,
                p.views,
                updates,
                epoch=epoch,
                teacher_cache=cache,
                amp_dtype=p.amp_dtype,
                world_size=env.world_size,
                show_progress=env.is_main,
            )
        except NonFiniteLoss as e:
            raise NonFiniteLoss(
                f"{e}: training stopped; {what_is_kept(folder, epoch)}; lower --lr, or set --clip-grad 1.0"
            ) from None
        line = _epoch_line(p, train_model, updates, epoch, stats, n_parameters)
        if folder is not None:
            folder.save_epoch(line, training_state(model, updates, epoch, cfg.to_dict(), config))
            if writer is not None:
                for key, value in line.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, epoch)
                writer.flush()
        if env.is_main:
            print(_epoch_summary(line))
    if writer is not None:
        writer.close()
    return line


def _epoch_line(p: Pieces, model: nn.Module, updates: Updates, epoch: int, stats: dict, n_parameters: int) -> dict:
    """The epoch's log line: training means, then the test split's accuracy (and the EMA's)."""
    test = evaluate(model, p.val_loader, device=p.device, amp_dtype=p.amp_dtype)
    line = {"epoch": epoch, **stats, "test_acc1": test["acc1"], "test_acc5": test["acc5"], "test_loss": test["loss"]}
    if updates.ema is not None:
        line["ema_acc1"] = evaluate(updates.ema.module, p.val_loader, device=p.device, amp_dtype=p.amp_dtype)["acc1"]
    line["n_parameters"] = n_parameters
    return line


def _epoch_summary(line: dict) -> str:
    ema = f"  ema top-1 {line['ema_acc1']:.2f}%" if "ema_acc1" in line else ""
    skipped = f"  ({line['skipped_images']} unreadable images skipped)" if line["skipped_images"] else ""
    if line.get("cpu_decoded_images"):  # the device input path's files its decoder does not take
        skipped += f"  ({line['cpu_decoded_images']} images decoded on the CPU)"
    return (
        f"epoch {line['epoch']}: loss {line['train_loss']:.4f}  top-1 {line['test_acc1']:.2f}%  "
        f"top-5 {line['test_acc5']:.2f}%{ema}  {line['images_per_s']:,.0f} img/s{skipped}"
    )


def _views_said(p: Pieces) -> str:
    """Where the training views are made, in words."""
    device, workers = p.device.type, p.options["num_workers"]
    loader = f"{workers} loader processes" if workers else "the training process"
    if p.input_path == "memory":
        return f"views augmented a batch at a time on {device}"
    if p.input_path == "device":
        return f"input path device: {loader} read the files, {device} decodes JPEGs and crops a batch at a time"
    rest = f", the rest of the augmentation a batch at a time on {device}" if p.views.augment is not None else ""
    return f"input path loader: {loader} decode and crop each image{rest}"


def _announcement(p: Pieces, cache: TeacherCache | None, n_parameters: int) -> str:
    """The line a run starts with: what trains on what, and from which teacher."""
    cfg, distill = p.cfg, p.cfg.distill
    methods = [distill.distillation_type] if distill.distillation_type != "none" else []
    methods += [f"attention x{distill.attn_distillation_weight:g}"] if p.criterion.attention else []
    source = f"{cache.meta['teacher']['name']} (cached in {cache.root})" if cache else getattr(p.teacher, "name", "")
    resized = cache.meta["teacher"].get("input_size") if cache else p.teacher and p.teacher.resize_to(p.img_size)
    if resized:
        source += f", which sees the views resized to its own {resized} px"
    teacher_note = f", distillation {' + '.join(methods)} from {source}" if methods else ""
    targets = getattr(p.train_set, "targets", None)  # shards: streamed, not known ahead
    labelled = len(p.train_set) if targets is None else sum(t >= 0 for t in targets)
    images = f"{len(p.train_set)} images" + (f" ({labelled} labelled)" if labelled < len(p.train_set) else "")
    images += f", each {cfg.data.repeat} times an epoch" if cfg.data.repeat > 1 else ""
    return (
        f"training {cfg.model.model} ({n_parameters / 1e6:.2f}M parameters) on {canonical_name(cfg.data.data_set)}: "
        f"{images}, {p.info.num_classes} classes, {p.img_size} px, {cfg.run.epochs} epochs, total batch "
        f"{_total_batch(p)}, lr {_lr(p):.2e}, {p.env.world_size} process(es) on {p.device.type}{teacher_note}; "
        f"{_views_said(p)}"
    )


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))
