"""Teacher-output cache: the teacher runs once per (sample, epoch); students read what it said instead of running it.

Every training view is a pure function of (run seed, epoch, global position), and Mixup/CutMix of (run seed,
epoch, process, step) (see `data/sampling.py`). A student replays the very views the teacher saw and looks up the
teacher's outputs by position. Stored per view:

- the teacher's top-k logits and their classes (hard distillation reads the first class; soft distillation is
  exact when k is the class count, else the remaining classes get no probability);
- its attention maps over the student's patch grid, when attention is distilled;
- the sample's index and a checksum of the view: a student whose views differ (other augmentation settings,
  another library version) is stopped at its first batch, not trained on misaligned targets.

A folder holds `meta.json` (what the cache was made for: data, views, teacher, maps) and one safetensors file per
epoch and producing process, each written atomically: an interrupted cache keeps its finished epochs and the next
run fills in the rest. One cache serves any student with the same data, seed and augmentation, and any process
count (positions are global) unless Mixup/CutMix or repeated augmentation tie the views to the batch layout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path

import torch

from ..files import atomic_write

META = "meta.json"
VERSION = 3  # 2: batch augmentation in the views spec; 3: views of other seeds and RandAugment draws
DTYPES = {"float16": torch.float16, "float32": torch.float32}
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


class TeacherCache:
    """A cache folder: `missing_epochs` / `write_epoch` to fill it, `lookup` to read it during training."""

    def __init__(self, root: str | Path, meta: dict):
        self.root, self.meta = Path(root), meta
        self._epoch: int | None = None
        self._rows: torch.Tensor | None = None
        self._data: dict[str, torch.Tensor] = {}

    # -- making one ---------------------------------------------------------------------------------------------
    @classmethod
    def open_or_create(cls, root: str | Path, spec: dict, *, create: bool) -> TeacherCache:
        """The cache at `root` for a run described by `spec` (see `train.cache_spec`).

        An existing cache must match the spec (else ValueError naming the difference); a missing one is started
        when `create` (its meta written; epochs are filled by the caller), else ValueError.
        """
        root = Path(root)
        path = root / META
        if path.exists():
            try:
                meta = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"{path} is not a teacher cache's meta.json (unreadable); remove {root}") from None
            _check(meta, spec, root)
            return cls(root, meta)
        if root.exists() and any(root.iterdir()):
            raise ValueError(f"{root} is not empty and holds no teacher cache ({META}); pick another --teacher-cache")
        if not create:
            raise ValueError(
                f"no teacher cache in {root}: make it with `deit cache-teacher` and the run's flags, or "
                "give --teacher-path so this run makes it first"
            )
        root.mkdir(parents=True, exist_ok=True)
        meta = {"version": VERSION, **spec}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
        return cls(root, meta)

    def missing_epochs(self, rank: int, epochs: int) -> list[int]:
        return [e for e in range(epochs) if not (self.root / epoch_file(e, rank)).exists()]

    @autocast_off
    def write_epoch(self, epoch: int, rank: int, parts: list[dict[str, torch.Tensor]]) -> None:
        """Store one epoch of one process: `parts` are `entries(...)` of its batches."""
        from safetensors.torch import save_file

        tensors = {key: torch.cat([p[key] for p in parts]).contiguous() for key in parts[0]}
        atomic_write(self.root / epoch_file(epoch, rank), lambda tmp: save_file(tensors, str(tmp)))

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
        from safetensors.torch import load_file

        files = [self.root / epoch_file(epoch, r) for r in range(self.meta["views"]["world_size"])]
        absent = [f.name for f in files if not f.exists()]
        if absent:
            raise ValueError(
                f"teacher cache {self.root} lacks epoch {epoch} ({absent[0]}): it was made for fewer "
                "epochs or interrupted; run `deit cache-teacher` with the same flags to finish it"
            )
        parts = [load_file(str(f)) for f in files]
        self._data = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        positions = self._data["positions"].long()
        self._rows = torch.full((int(positions.max()) + 1,), -1, dtype=torch.long)
        self._rows[positions] = torch.arange(len(positions))
        self._epoch = epoch


def _check(meta: dict, spec: dict, root: Path) -> None:
    """Refuse a cache made for another run, naming the first difference."""
    if meta.get("version") != VERSION:
        raise ValueError(f"{root} was made by another version of the teacher cache; make a new one")
    # Mixup, repeated augmentation and batch augmentation draw per batch: a view depends on the batch layout
    layout_bound = spec["views"]["mixup"] is not None or spec["views"]["repeated_aug"] or spec["views"]["batch_aug"]
    for section in ("data", "views", "teacher", "attention"):
        theirs, ours = meta.get(section), spec.get(section)
        if section == "teacher" and ours and ours.get("weights") is None:
            continue  # no teacher weights given: trust the cache's
        if section == "attention" and ours is None:
            continue  # the maps are not needed
        if section == "views" and not layout_bound:  # else the batch layout does not change a view
            ignore = ("batch_size", "world_size", "stream")
            theirs = {k: v for k, v in (theirs or {}).items() if k not in ignore}
            ours = {k: v for k, v in ours.items() if k not in ignore}
        if theirs != ours:
            keys = sorted(set(theirs or {}) | set(ours or {}), key=str) if isinstance(ours, dict) else []
            diff = next((k for k in keys if (theirs or {}).get(k) != (ours or {}).get(k)), section)
            got = (theirs or {}).get(diff) if keys else theirs
            want = (ours or {}).get(diff) if keys else ours
            if isinstance(got, list) and isinstance(want, list):  # e.g. the transform's steps: the first that differs
                got, want = next(((a, b) for a, b in zip(got, want) if a != b), (len(got), len(want)))
            raise ValueError(
                f"teacher cache {root} was made for {section} {diff}={_short(got)}, but this run has "
                f"{_short(want)}; make a new cache (another --teacher-cache folder)"
            )
    if meta["epochs"] < spec["epochs"]:
        raise ValueError(
            f"teacher cache {root} holds {meta['epochs']} epochs, this run needs {spec['epochs']}; make a "
            "new cache with --epochs"
        )
    if spec["distillation_type"] == "soft" and meta["topk"] < spec["topk"]:
        raise ValueError(
            f"teacher cache {root} keeps the top {meta['topk']} logits, soft distillation here asks for "
            f"{spec['topk']}; make a new cache with --teacher-cache-topk {spec['topk']}"
        )


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."
