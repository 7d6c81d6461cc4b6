"""What a teacher cache is made for: the typed spec a run builds (`CacheSpec`), meta.json's bounds and checks
(`check_meta`), and the comparison that refuses a cache made for another run (`check_serves`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

META = "meta.json"


VERSION = 4  # 2: batch augmentation in the views spec; 3: views of other seeds and RandAugment draws; 4: digests


UNDIGESTED = 3  # read, with a warning: its files carry no digest


MAX_META_BYTES = 2**20  # a meta.json holds the transform's description, a few KB


MAX_CLASSES = 1_000_000  # as a shard's label is bounded


MAX_PROCESSES = 2**16


DTYPES = {"float16": torch.float16, "float32": torch.float32}


OPTIONAL = {"repeat": 1, "stream": None, "input_path": "loader", "jpeg_draft": False, "input_size": None, "name": None}
"""Keys meta.json names only when they differ from these values."""


@dataclass(frozen=True)
class DataSpec:
    """The training set the views are drawn from."""

    data_set: str
    size: int
    num_classes: int
    targets: str = ""  # a digest of the labels
    repeat: int = 1  # passes over the set an epoch (meta.json names it only when above 1)


@dataclass(frozen=True)
class ViewSpec:
    """How each view is drawn: a function of the seed and the position, and of the batch layout when Mixup,
    repeated augmentation or batch augmentation draw per batch (`layout_bound`)."""

    seed: int
    transform: tuple[str, ...] = ()  # the per-image transform's steps, as their reprs print them
    mixup: dict | None = None  # Mixup/CutMix's settings; None: off
    batch_aug: bool = False
    repeated_aug: bool = False
    batch_size: int = 1
    world_size: int = 1
    stream: dict | None = None  # shards: loader workers and shuffle buffer (meta.json names it only for shards)
    input_path: str = "loader"  # where files became views: "device" decodes and resamples otherwise (to a level)
    jpeg_draft: bool = False  # a folder's large JPEGs decoded at a lower scale (`images.read_lazy`)

    @property
    def layout_bound(self) -> bool:
        return self.mixup is not None or self.repeated_aug or self.batch_aug


@dataclass(frozen=True)
class TeacherSpec:
    name: str | None = None
    weights: str | None = None  # a digest of its weights; None: no teacher at hand, the cache's is trusted
    input_size: int | None = None  # the views were resized to this for it (meta.json names it only then)


@dataclass(frozen=True)
class AttentionSpec:
    blocks: tuple[int, ...]  # the student blocks whose maps are kept
    grid: int  # the student's patch grid, a side
    heads: int  # the student's heads


@dataclass(frozen=True)
class CacheSpec:
    """What a cache is made for, and what a run asks of one; meta.json holds it (`sections`) with the version."""

    data: DataSpec
    views: ViewSpec
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    attention: AttentionSpec | None = None
    epochs: int = 1
    topk: int = 10
    dtype: str = "float16"
    distillation_type: str = "hard"

    def sections(self) -> dict:
        """The spec as meta.json writes it: lists for tuples, optional keys only when they say something."""
        optional = OPTIONAL

        def plain(section) -> dict | None:
            if section is None:
                return None
            values = asdict(section)
            return {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in values.items()
                if not (k in optional and v == optional[k])
            }

        return {
            "data": plain(self.data),
            "views": plain(self.views),
            "teacher": plain(self.teacher),
            "attention": plain(self.attention),
            "epochs": self.epochs,
            "topk": self.topk,
            "dtype": self.dtype,
            "distillation_type": self.distillation_type,
        }


def check_meta(meta, path: Path) -> None:
    """A cache's meta.json read from disk: every field the cache reads has its type and bounds, so that a bad one
    is refused in one line before it sizes a table or names a billion files."""

    def refuse(key: str, value, want: str) -> ValueError:
        return ValueError(
            f"{path}: {key}={short_text(json.dumps(value, default=str))}, where a teacher cache has {want}; make "
            "the cache again with deit cache-teacher (another --teacher-cache folder)"
        )

    if not isinstance(meta, dict):
        raise refuse("(the file)", type(meta).__name__, "a mapping")
    if meta.get("version") not in (UNDIGESTED, VERSION):
        raise ValueError(
            f"{path}: made by another version of the teacher cache ({short_text(meta.get('version'))}, this one reads "
            f"{UNDIGESTED} and {VERSION}); make a new one with deit cache-teacher"
        )

    def number(where: dict, key: str, low: int, high: int, name: str | None = None) -> None:
        value = where.get(key) if isinstance(where, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise refuse(name or key, value, f"a whole number from {low:,} to {high:,}")

    for section in ("data", "views"):
        if not isinstance(meta.get(section), dict):
            raise refuse(section, meta.get(section), "a mapping")
    data, views = meta["data"], meta["views"]
    number(meta, "epochs", 1, 10**6)
    number(data, "num_classes", 1, MAX_CLASSES, "data.num_classes")
    number(data, "size", 1, 10**10, "data.size")
    if "repeat" in data:
        number(data, "repeat", 1, 10**4, "data.repeat")
    number(views, "world_size", 1, MAX_PROCESSES, "views.world_size")
    number(views, "batch_size", 1, 10**6, "views.batch_size")
    number(meta, "topk", 1, data["num_classes"])
    if meta.get("dtype") not in DTYPES:
        raise refuse("dtype", meta.get("dtype"), f"one of {', '.join(DTYPES)}")
    attention = meta.get("attention")
    if attention is not None:
        blocks = attention.get("blocks") if isinstance(attention, dict) else None
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= 1000:
            raise refuse("attention.blocks", blocks, "a list of blocks")
        for b in blocks:
            if not isinstance(b, int) or isinstance(b, bool) or not -1000 <= b < 1000:
                raise refuse("attention.blocks", blocks, "a list of block numbers")
        number(attention, "grid", 1, 1024, "attention.grid")
        number(attention, "heads", 1, 1024, "attention.heads")


def check_serves(meta: dict, spec: CacheSpec, root: Path) -> None:
    """Refuse a cache made for another run, naming the first difference."""
    wanted = spec.sections()
    for section in ("data", "views", "teacher", "attention"):
        theirs, ours = meta.get(section), wanted[section]
        if section == "teacher" and spec.teacher.weights is None:
            continue  # no teacher weights given: trust the cache's
        if section == "attention" and ours is None:
            continue  # the maps are not needed
        if section == "views" and not spec.views.layout_bound:  # else the batch layout does not change a view
            ignore = ("batch_size", "world_size", "stream")
            theirs = {k: v for k, v in (theirs or {}).items() if k not in ignore}
            ours = {k: v for k, v in ours.items() if k not in ignore}
        if theirs != ours:
            keys = sorted(set(theirs or {}) | set(ours or {}), key=str) if isinstance(ours, dict) else []
            diff = next((k for k in keys if (theirs or {}).get(k) != (ours or {}).get(k)), section)
            got = (theirs or {}).get(diff, OPTIONAL.get(diff)) if keys else theirs
            want = (ours or {}).get(diff, OPTIONAL.get(diff)) if keys else ours
            if isinstance(got, list) and isinstance(want, list):  # e.g. the transform's steps: the first that differs
                got, want = next(((a, b) for a, b in zip(got, want) if a != b), (len(got), len(want)))
            if diff in ("input_path", "jpeg_draft"):  # the views' pixels differ: the other setting reads this cache
                flag = f"--input-path {got}" if diff == "input_path" else ("--jpeg-draft" if got else "--no-jpeg-draft")
                raise ValueError(
                    f"teacher cache {root} was made for views {diff}={short_text(got)}, but this run has "
                    f"{short_text(want)}: give {flag} to use it, or make a new cache (another --teacher-cache folder)"
                )
            raise ValueError(
                f"teacher cache {root} was made for {section} {diff}={short_text(got)}, but this run has "
                f"{short_text(want)}; make a new cache (another --teacher-cache folder)"
            )
    if meta["epochs"] < spec.epochs:
        raise ValueError(
            f"teacher cache {root} holds {meta['epochs']} epochs, this run needs {spec.epochs}; make a new cache "
            "with --epochs"
        )
    if spec.distillation_type == "soft" and meta["topk"] < spec.topk:
        raise ValueError(
            f"teacher cache {root} keeps the top {meta['topk']} logits, soft distillation here asks for "
            f"{spec.topk}; make a new cache with --teacher-cache-topk {spec.topk}"
        )


def short_text(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."
