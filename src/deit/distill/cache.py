"""Teacher-output cache: the teacher runs once per (sample, epoch); students read what it said instead of running it.

Every training view is a pure function of (run seed, epoch, global position), and Mixup/CutMix of (run seed,
epoch, process, step) (see `data/sampling.py`). A student replays the very views the teacher saw and looks up the
teacher's outputs by position. Stored per view:

- the teacher's top-k logits and their classes (hard distillation reads the first class; soft distillation is
  exact when k is the class count, else the remaining classes get no probability);
- its attention maps over the student's patch grid, when attention is distilled;
- the sample's index and a checksum of the view: a student whose views differ (other augmentation settings,
  another library version) is stopped at its first batch, not trained on misaligned targets.

A folder holds `meta.json` (what the cache was made for: a `CacheSpec` of data, views, teacher and maps, built by
the run in `caching.cache_spec`) and one safetensors file per epoch and producing process, each written atomically:
an interrupted cache keeps its finished epochs and the next run fills in the rest. Nothing read is trusted:
meta.json is bounded in size and checked field by field, and an epoch file's size, names, dtypes, shapes and index
ranges are checked before a value is used, and its tensors against the digest, epoch and process written in its
header (an edited, damaged, truncated or swapped file is refused naming it).

One cache serves any student with the same data, seed and augmentation, and any process count (positions are
global) unless Mixup/CutMix, repeated or batch augmentation tie the views to the batch layout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from pathlib import Path

import torch

from ..files import LOCK, JSONFileError, atomic_write, lock_holder, read_json
from .cache_spec import (
    DTYPES,
    MAX_META_BYTES,
    META,
    UNDIGESTED,
    VERSION,
    CacheSpec,
    check_meta,
    check_serves,
    short_text,
)

log = logging.getLogger("deit")

MAX_HEADER_BYTES = 2**20  # an epoch file's header: a few tensors' names and shapes, and our metadata
FILL = 1e4  # classes outside the top k sit this far below the k-th logit: probability 0 at any temperature


def autocast_off(fn):
    """`fn` run with autocast off on the CPU and on CUDA: what a cache stores and reads back must not depend on
    its caller's autocast (a training step's or a benchmark's bf16 region)."""

    @functools.wraps(fn)
    def outside_autocast(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return outside_autocast


@autocast_off
def view_checksum(images: torch.Tensor) -> torch.Tensor:
    """(B, ...) views -> (B,) float32 projections on a fixed random direction: equal views, equal numbers; a
    flipped, shifted or re-coloured view, another number. In float64, so that TF32 matmuls cannot move it either."""
    flat = images.detach().flatten(1).double()
    return (flat @ _direction(flat.shape[1], str(flat.device)) / flat.shape[1] ** 0.5).float()


@functools.lru_cache(maxsize=4)
def _direction(size: int, device: str) -> torch.Tensor:
    """The fixed direction of `view_checksum`: drawn once per image size and device, not at every step."""
    return torch.randn(size, generator=torch.Generator().manual_seed(0x7EAC)).double().to(device)


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of a model's weights (parameters and buffers, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def targets_digest(targets) -> str:
    return hashlib.sha256(json.dumps([int(t) for t in targets]).encode()).hexdigest()[:16]


def epoch_file(epoch: int, rank: int) -> str:
    return f"epoch_{epoch:04d}_rank_{rank:03d}.safetensors"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of names, dtypes, shapes and bytes, in name order (ImageNet's epoch of 66 MB: docs/teacher-cache.md)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TeacherCache:
    """A cache folder: `missing_epochs` / `write_epoch` to fill it, `lookup` to read it during training."""

    def __init__(self, root: str | Path, meta: dict):
        self.root, self.meta = Path(root), meta
        self._epoch: int | None = None
        self._rows: torch.Tensor | None = None
        self._data: dict[str, torch.Tensor] = {}

    # -- making one ---------------------------------------------------------------------------------------------
    @classmethod
    def open_or_create(cls, root: str | Path, spec: CacheSpec, *, create: bool) -> TeacherCache:
        """The cache at `root` for a run described by `spec`.

        An existing cache must match the spec (else ValueError naming the difference); a missing one is started
        when `create` (its meta written; epochs are filled by the caller), else ValueError.
        """
        root = Path(root)
        path = root / META
        if path.exists():
            try:
                meta = read_json(path, MAX_META_BYTES)
            except JSONFileError as e:
                raise ValueError(f"{e}: not a teacher cache's {META}; remove {root}, or pick another folder") from None
            check_meta(meta, path)
            check_serves(meta, spec, root)
            if meta["version"] == UNDIGESTED:
                log.warning(
                    f"teacher cache {root} was made before its files carried digests: an edited or damaged file "
                    "would go unseen; make it again with deit cache-teacher to have them checked"
                )
            return cls(root, meta)
        holder = lock_holder(root)
        if holder:  # its maker has not written meta.json yet
            raise ValueError(f"{root} is in use by {holder}; wait for it to finish, or choose another folder")
        if root.exists() and any(f.name != LOCK for f in root.iterdir()):
            raise ValueError(f"{root} is not empty and holds no teacher cache ({META}); pick another --teacher-cache")
        if not create:
            raise ValueError(
                f"no teacher cache in {root}: make it with `deit cache-teacher` and the run's flags, or "
                "give --teacher-path so this run makes it first"
            )
        root.mkdir(parents=True, exist_ok=True)
        meta = {"version": VERSION, **spec.sections()}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
        return cls(root, meta)

    def missing_epochs(self, rank: int, epochs: int) -> list[int]:
        return [e for e in range(epochs) if not (self.root / epoch_file(e, rank)).exists()]

    @autocast_off
    def write_epoch(self, epoch: int, rank: int, parts: list[dict[str, torch.Tensor]]) -> None:
        """Store one epoch of one process: `parts` are `entries(...)` of its batches."""
        from safetensors.torch import save_file

        tensors = {key: torch.cat([p[key] for p in parts]).contiguous() for key in parts[0]}
        header = {"epoch": str(epoch), "rank": str(rank), "digest": tensors_digest(tensors)}
        atomic_write(self.root / epoch_file(epoch, rank), lambda tmp: save_file(tensors, str(tmp), metadata=header))

    @autocast_off
    def entries(self, positions, indices, views, logits, maps) -> dict[str, torch.Tensor]:
        """What one batch stores: positions, indices, view checksums, top-k logits and classes, maps."""
        k = min(self.meta["topk"], logits.shape[1])
        values, classes = logits.float().topk(k, dim=1)
        dtype = DTYPES[self.meta["dtype"]]
        out = {  # ImageNet, k = 10: 52 bytes a view
            "positions": torch.as_tensor(positions).to(torch.int32).cpu(),
            "indices": torch.as_tensor(indices).to(torch.int32).cpu(),
            "checksums": view_checksum(views).cpu(),
            "values": values.to(dtype).cpu(),
            "classes": classes.to(torch.int16 if logits.shape[1] <= 2**15 else torch.int32).cpu(),
        }
        for i, m in enumerate(maps or []):
            out[f"map{i}"] = m.to(dtype).cpu()
        return out

    # -- reading it ---------------------------------------------------------------------------------------------
    @autocast_off
    def lookup(
        self, epoch: int, positions: torch.Tensor, indices: torch.Tensor, views: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The teacher's logits (B, classes) and maps for these views; ValueError if the views are not the ones
        the teacher saw."""
        self._load(epoch)
        positions = torch.as_tensor(positions).long().cpu()
        if int(positions.max()) >= len(self._rows) or bool((self._rows[positions] < 0).any()):
            raise ValueError(
                f"teacher cache {self.root} has no outputs for some positions of epoch {epoch}: it was made "
                "for fewer samples or another process layout; make a new one for this run"
            )
        rows = self._rows[positions]
        if not torch.equal(self._data["indices"][rows].long(), torch.as_tensor(indices).long().cpu()):
            raise ValueError(
                f"teacher cache {self.root} was made for another sample order (seed or data); make a new "
                "one for this run"
            )
        stored = self._data["checksums"][rows].to(views.device)
        if not torch.allclose(view_checksum(views), stored, rtol=1e-3, atol=1e-3):
            raise ValueError(
                f"teacher cache {self.root}: this run's augmented images differ from those the teacher saw "
                "(other augmentation settings or library versions); make a new cache"
            )
        values = self._data["values"][rows].float()
        classes = self._data["classes"][rows].long()
        logits = (values[:, -1:] - FILL).expand(-1, self.meta["data"]["num_classes"]).clone()
        logits.scatter_(1, classes, values)
        n_maps = sum(key.startswith("map") for key in self._data)
        maps = [self._data[f"map{i}"][rows].float().to(views.device) for i in range(n_maps)] or None
        return logits.to(views.device), maps

    def _load(self, epoch: int) -> None:
        if self._epoch == epoch:
            return

        files = [self.root / epoch_file(epoch, r) for r in range(self.meta["views"]["world_size"])]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            holder = lock_holder(self.root)
            if holder:
                raise ValueError(f"teacher cache {self.root} lacks epoch {epoch}: {holder} is making it; wait for it")
            raise ValueError(
                f"teacher cache {self.root} lacks epoch {epoch} ({absent[0]}): it was made for fewer "
                "epochs or interrupted; run `deit cache-teacher` with the same flags to finish it"
            )
        parts = [self._read(f, epoch, rank) for rank, f in enumerate(files)]
        self._data = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        positions = self._data["positions"].long()
        if len(positions) == 0:
            raise ValueError(f"teacher cache {self.root}: epoch {epoch} holds no views; make the cache again")
        self._rows = torch.full((int(positions.max()) + 1,), -1, dtype=torch.long)
        self._rows[positions] = torch.arange(len(positions))
        self._epoch = epoch

    def _read(self, path: Path, epoch: int, rank: int) -> dict[str, torch.Tensor]:
        """One epoch file, refused in one line (naming it, and the remedy) unless it is the file written for this
        epoch and process: within the size its epoch can have, the names, dtypes and shapes the meta says, classes
        and positions in range (they index tables), and the digest in its header."""
        from safetensors import safe_open

        meta, (k, rows, row_bytes, maps, map_shapes) = self.meta, _layout(self.meta)

        def refuse(problem: str) -> ValueError:
            return ValueError(
                f"teacher cache file {path} {problem}; make the cache again with deit cache-teacher (into an empty "
                "folder)"
            )

        size = path.stat().st_size
        if size > MAX_HEADER_BYTES + rows * row_bytes:
            raise refuse(f"has {size:,} bytes, more than an epoch of this cache can ({rows:,} views)")
        try:
            with safe_open(str(path), "pt") as f:
                header, names = f.metadata() or {}, set(f.keys())
                expected = {"positions", "indices", "checksums", "values", "classes", *maps}
                if names != expected:
                    odd = sorted(names ^ expected)[0]
                    raise refuse(f"{'lacks' if odd in expected else 'has an unknown tensor'} {odd!r}")
                tensors = {name: f.get_tensor(name) for name in sorted(names)}
        except ValueError:
            raise
        except Exception as e:  # safetensors' own error for a truncated or malformed file, or an OSError
            raise refuse(f"cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if meta["version"] != UNDIGESTED:  # first: a damaged file is named as such, whatever byte changed
            if "digest" not in header:
                raise refuse("has no digest in its header: it was written by something else, or edited")
            if (header.get("epoch"), header.get("rank")) != (str(epoch), str(rank)):
                raise refuse(
                    f"holds epoch {short_text(header.get('epoch'))} of process {short_text(header.get('rank'))}, "
                    f"not epoch {epoch} of process {rank} (a file copied over another)"
                )
            if tensors_digest(tensors) != header["digest"]:
                raise refuse("does not match the digest written with it (edited or damaged)")
        n = tensors["positions"].shape[0] if tensors["positions"].dim() == 1 else -1
        dtype = DTYPES[meta["dtype"]]
        shapes = {
            "positions": ((n,), (torch.int32,)),
            "indices": ((n,), (torch.int32,)),
            "checksums": ((n,), (torch.float32,)),
            "values": ((n, k), (dtype,)),
            "classes": ((n, k), (torch.int16, torch.int32)),
            **{name: ([(n, *shape) for shape in map_shapes], (dtype,)) for name in maps},
        }
        for name, (shape, dtypes) in shapes.items():
            t = tensors[name]
            if tuple(t.shape) not in (shape if isinstance(shape, list) else [shape]) or t.dtype not in dtypes:
                raise refuse(f"has {name} of shape {tuple(t.shape)} and {t.dtype}, where this cache has {shape}")
        classes, positions = tensors["classes"], tensors["positions"]
        if n and (int(classes.min()) < 0 or int(classes.max()) >= meta["data"]["num_classes"]):
            raise refuse(f"has classes outside 0 to {meta['data']['num_classes'] - 1}")
        if n and (int(positions.min()) < 0 or int(positions.max()) >= rows):
            raise refuse(f"has positions outside 0 to {rows - 1}")
        return tensors


def _layout(meta: dict) -> tuple[int, int, int, list[str], list[tuple[int, ...]]]:
    """What an epoch file of this (checked) meta holds: k logits a view, at most how many views, at most how many
    bytes a view, the maps' names and a map's possible shapes for one view (one map, or one per head)."""
    data, views, attention = meta["data"], meta["views"], meta["attention"]
    k = min(meta["topk"], data["num_classes"])
    # every view of the epoch in one file at most: repeated augmentation shows each sample 3 times, plus the padding
    # of the last batch of every process
    rows = data["size"] * data.get("repeat", 1) * 3 + views["world_size"] * views["batch_size"]
    value_bytes = DTYPES[meta["dtype"]].itemsize
    maps, shapes, map_bytes = [], [], 0
    if attention:
        cells, heads = attention["grid"] ** 2, attention["heads"]
        maps, shapes = [f"map{i}" for i in range(len(attention["blocks"]))], [(cells,), (heads, cells)]
        map_bytes = len(maps) * heads * cells * value_bytes
    return k, rows, 12 + k * (value_bytes + 4) + map_bytes, maps, shapes
