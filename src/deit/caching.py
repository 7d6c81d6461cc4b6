"""A run's teacher cache: what it must have been made for (`cache_spec`, from the run's config), opened
(`open_cache`), and filled where it lacks epochs by running the teacher over the run's very views (`fill_cache`).
The cache's files and their checks are `distill/cache.py`'s."""

from __future__ import annotations

import contextlib
from pathlib import Path

from . import distributed
from .config import TrainConfig
from .data import canonical_name
from .data.images import read_lazy
from .data.loaders import cache_loader
from .data.sampling import process_seed, seed_everything
from .distill.cache import TeacherCache, targets_digest, weights_digest
from .distill.cache_spec import AttentionSpec, CacheSpec, DataSpec, TeacherSpec, ViewSpec
from .engine import fill_teacher_cache
from .files import FolderLock
from .pieces import Pieces


def open_cache(p: Pieces) -> TeacherCache:
    """The run's teacher cache, opened (the main process creates it if absent): every process checks it fits the
    run and that its own missing epochs can be filled (a teacher is at hand)."""
    folder, env = p.cfg.distill.teacher_cache, p.env
    spec = cache_spec(
        p.cfg,
        p.train_set,
        p.info.num_classes,
        p.teacher,
        p.criterion.attention,
        env.world_size,
        p.views.augment,
        p.img_size,
        p.input_path,
    )
    can_fill = p.teacher is not None
    cache = TeacherCache.open_or_create(folder, spec, create=can_fill) if env.is_main else None
    distributed.barrier()
    if cache is None:
        cache = TeacherCache.open_or_create(folder, spec, create=False)
    missing = cache.missing_epochs(env.rank, spec.epochs)
    if missing and not can_fill:
        raise ValueError(f"teacher cache {folder} lacks epoch {missing[0]}: give --teacher-path to finish it")
    return cache


def fill_cache(p: Pieces) -> tuple[TeacherCache, int]:
    """Run the teacher over the epochs of views the cache lacks; returns the (complete) cache and how many epochs
    this process made."""
    env, epochs = p.env, p.cfg.run.epochs
    folder = Path(p.cfg.distill.teacher_cache)
    # the main process owns the cache folder while it makes the cache, from before its meta.json is written (so that
    # another maker or a student arriving then is told who is writing) to its last epoch; each process writes its
    # own files
    owns = ("epoch_*.safetensors", "meta.json")
    with contextlib.ExitStack() as held:
        locked = env.is_main and p.teacher is not None and not (folder / "meta.json").exists()
        if locked:
            held.enter_context(FolderLock(folder, "deit cache-teacher", owns))
        cache = open_cache(p)
        missing = cache.missing_epochs(env.rank, epochs)
        if missing and env.is_main and not locked:
            held.enter_context(FolderLock(folder, "deit cache-teacher", owns))
            missing = cache.missing_epochs(env.rank, epochs)  # another maker may have finished some meanwhile
        if missing and env.is_main:
            print(f"teacher cache {cache.root}: running {p.teacher.name} on {len(missing)} epoch(s) of views")
        # views drawn per batch (Mixup, batch augmentation): the teacher sees the training batches; else larger ones
        per_batch = p.views.mixup is not None or p.views.augment is not None
        loader = (
            p.train_loader
            if per_batch
            else cache_loader(p.train_set, p.sampler, batch_size=p.cfg.run.batch_size, options=p.options)
        )
        for epoch in missing:
            seed_everything(process_seed(p.cfg.run.seed, epoch, env.rank), cuda=p.device.type == "cuda")
            p.sampler.set_epoch(epoch)
            fill_teacher_cache(
                p.criterion,
                loader,
                p.views,
                cache,
                epoch=epoch,
                rank=env.rank,
                amp_dtype=p.amp_dtype,
                show_progress=env.is_main,
            )
    distributed.barrier()
    return cache, len(missing)


def cache_spec(
    cfg: TrainConfig,
    train_set,
    num_classes: int,
    teacher,
    attention,
    world_size: int,
    augment=None,
    img_size: int | None = None,
    input_path: str = "loader",
) -> CacheSpec:
    """What a teacher cache must have been made for to serve this run (see `distill/cache.py`)."""
    aug = cfg.aug
    teacher_spec = TeacherSpec()  # no teacher weights given: the cache's are trusted
    if teacher is not None:
        teacher_spec = TeacherSpec(teacher.name, weights_digest(teacher.model), teacher.resize_to(img_size) or None)
    transform = [t for t in (train_set.transform, augment) if t is not None]
    shards = hasattr(train_set, "split")
    return CacheSpec(
        data=DataSpec(
            canonical_name(cfg.data.data_set),
            len(train_set),
            num_classes,
            train_set.split.labels_digest if shards else targets_digest(train_set.targets),
            cfg.data.repeat,
        ),
        views=ViewSpec(
            seed=cfg.run.seed,
            transform=tuple(line.strip() for t in transform for line in repr(t).splitlines()),
            mixup=aug.mixup_settings(),
            batch_aug=augment is not None,
            input_path="device" if input_path == "device" else "loader",
            jpeg_draft=getattr(getattr(train_set, "reader", None), "func", None) is read_lazy,
            repeated_aug=aug.repeated_aug and world_size > 1,
            batch_size=cfg.run.batch_size,
            world_size=world_size,
            # shards: the order within a process also follows from its loader workers and shuffle buffer
            stream={"workers": cfg.data.num_workers, "shuffle_buffer": cfg.data.shuffle_buffer} if shards else None,
        ),
        teacher=teacher_spec,
        attention=AttentionSpec(tuple(attention.blocks), attention.grid, attention.heads) if attention else None,
        epochs=cfg.run.epochs,
        topk=min(cfg.distill.teacher_cache_topk, num_classes),
        dtype=cfg.distill.teacher_cache_dtype,
        distillation_type=cfg.distill.distillation_type,
    )
