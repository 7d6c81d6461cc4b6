"""`deit shard`: a data set written as tar shards with webdataset's writer and recorded in the index; resumable,
the plan (which image goes to which shard) a function of the images, the seed and the shard size."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...messages import first_line
from .index import FORMAT, INDEX, SEEK_EVERY, VERSION, labels_digest, read_index

log = logging.getLogger("deit")


def parse_size(text: str) -> int:
    """'256MB', '1.5GiB', '500k', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"shard size {text!r}: a number of bytes such as 256MB, 1GB or 500KiB")
    number, unit, binary = match.groups()
    size = float(number) * (1024 if binary else 1000) ** " kmgt".index(unit or " ")
    if size < 1024:
        raise ValueError(f"shard size {text!r} is under 1 KB: give e.g. 256MB")
    return int(size)


@dataclass
class Item:
    """One image to write: its name (for keys and messages), class, size in bytes, extension, and its bytes."""

    name: str
    target: int
    size: int
    ext: str
    load: Callable[[], bytes]


def items_of(dataset) -> list[Item]:
    """The images of a built data set as they will be written: a folder's files as they are, in-memory images
    (the digits, Fashion-MNIST, CIFAR) as PNG."""
    if hasattr(dataset, "samples"):  # an ImageFolder: the files' own bytes
        return [
            Item(path, target, os.path.getsize(path), Path(path).suffix.lower().lstrip("."), Path(path).read_bytes)
            for path, target in dataset.samples
        ]
    items = []
    mode = "L" if dataset.images.ndim == 3 else "RGB"
    for i, (image, target) in enumerate(zip(dataset.images, dataset.targets)):
        buffer = io.BytesIO()
        Image.fromarray(image, mode).save(buffer, format="PNG")
        data = buffer.getvalue()
        items.append(Item(f"{i:06d}", int(target), len(data), "png", lambda data=data: data))
    return items


def tar_bytes(size: int) -> int:
    """What a sample of `size` image bytes takes in a tar: a header and the padded data per member, and the .cls."""
    return 512 + -(-size // 512) * 512 + 1024


def plan_shards(items: list[Item], shard_size: int, seed: int) -> list[list[int]]:
    """The items of each shard: all items shuffled by `seed`, then cut into shards of at most `shard_size` bytes
    (a larger image gets a shard of its own)."""
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5A2D])).permutation(len(items)).tolist()
    shards, current, used = [], [], 1024  # a tar ends with two zero blocks
    for i in order:
        cost = tar_bytes(items[i].size)
        if current and used + cost > shard_size:
            shards.append(current)
            current, used = [], 1024
        current.append(i)
        used += cost
    if current:
        shards.append(current)
    return shards


def write_split(
    items: list[Item],
    class_names: list[str],
    out: Path,
    split: str,
    *,
    shard_size: int,
    seed: int = 0,
    source: str = "",
    show_progress: bool = False,
) -> dict:
    """Write `items` as shards `{split}-NNNNNN.tar` in `out` and record them in its index; returns the split's entry.

    Resumable: the plan (which item goes where) follows from the items, the seed and the size; finished shards are
    recorded in `.{split}-progress.json` and kept when the same plan is written again. Files that are not readable
    images are left out, each named in a warning.
    """
    from ...files import FolderLock, write_text
    from ...progress import progress

    out.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(items, shard_size, seed)
    digest = hashlib.sha256(
        json.dumps([seed, shard_size, split, [(i.name, i.size, i.target) for i in items]]).encode()
    ).hexdigest()[:16]
    state_path = out / f".{split}-progress.json"
    owns = (f"{split}-*.tar", INDEX, state_path.name)
    with FolderLock(out, "deit shard", owns):
        existing = _existing_index(out)
        if existing and existing["class_names"] != class_names:
            raise ValueError(
                f"{out / INDEX} holds shards of classes {existing['class_names'][:3]}..., these are "
                f"{class_names[:3]}...: write them to another folder"
            )
        state = _resumed(state_path, digest, out, split)
        names = [f"{split}-{k:06d}.tar" for k in range(len(plan))]
        bar, task = progress(f"shard {split}", len(items), show_progress)
        left_out = 0
        with bar:
            for k, (name, members) in enumerate(zip(names, plan)):
                done = state["done"].get(name)
                if done and (out / name).is_file() and (out / name).stat().st_size == done["bytes"]:
                    bar.advance(task, len(members))
                    continue
                state["done"][name] = _write_shard(
                    out / name, k, [items[i] for i in members], lambda: bar.advance(task)
                )
                left_out += len(members) - state["done"][name]["samples"]
                write_text(state_path, json.dumps(state))
        entry = _split_entry([(name, state["done"][name]) for name in names], class_names)
        entry.update(seed=seed, shard_size=shard_size, source=source)
        index = existing or {"format": FORMAT, "version": VERSION, "class_names": class_names, "splits": {}}
        index["splits"][split] = entry
        write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
        for stale in sorted(out.glob(f"{split}-*.tar")):
            if stale.name not in names:
                stale.unlink()
    entry["left_out"] = left_out
    return entry


def _resumed(state_path: Path, digest: str, out: Path, split: str) -> dict:
    """The shards already written for this plan (`digest`), or a fresh start where none of the split's are there."""
    state = _progress(state_path)
    if state.get("plan") == digest:
        return state
    if sorted(out.glob(f"{split}-*.tar")):
        raise ValueError(
            f"{out} holds {split} shards written from another source or with other settings (seed, shard "
            f"size): give another folder, or remove its {split}-*.tar to write them again"
        )
    return {"plan": digest, "done": {}}


def _write_shard(path: Path, k: int, members: list[Item], advance: Callable[[], None]) -> dict:
    """Shard number `k` of a split, written atomically: its readable members, with what the index records of it."""
    import webdataset as wds

    from ...files import atomic_write

    labels: list[int] = []
    seeks: list[int] = []

    def write(tmp: Path) -> None:
        with wds.TarWriter(str(tmp), encoder=False, mtime=0) as tar:
            for j, item in enumerate(members):
                data = _checked(item)
                advance()
                if data is None:
                    continue
                if len(labels) % SEEK_EVERY == 0:
                    seeks.append(tar.tarstream.offset)  # where this sample's first member begins
                key = f"{k:06d}{j:06d}_{_key_part(item.name)}"
                tar.write({"__key__": key, item.ext: data, "cls": str(item.target).encode()})
                labels.append(item.target)

    atomic_write(path, write)
    return {"samples": len(labels), "bytes": path.stat().st_size, "seeks": seeks, "labels": labels}


def _split_entry(done: list[tuple[str, dict]], class_names: list[str]) -> dict:
    """A split's entry in the index, from its shards' records in order."""
    labels = [t for _, d in done for t in d["labels"]]
    return {
        "shards": [{"name": n, "samples": d["samples"], "bytes": d["bytes"], "seeks": d["seeks"]} for n, d in done],
        "samples": sum(d["samples"] for _, d in done),
        "seek_every": SEEK_EVERY,
        "class_counts": np.bincount(labels, minlength=len(class_names)).tolist(),
        "labels_digest": labels_digest(labels),
    }


def _checked(item: Item) -> bytes | None:
    """The item's bytes if they open as an image (the header only: nothing is decoded), else None and a warning."""
    try:
        data = item.load()
        with Image.open(io.BytesIO(data)):
            pass
        return data
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        log.warning(f"leaving out {item.name}: not a readable image ({first_line(e)})")
        return None


def _key_part(name: str) -> str:
    """A source file's stem as a key may hold it: webdataset cuts keys at the first dot."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:48] or "x"


def _existing_index(out: Path) -> dict | None:
    return read_index(out) if (out / INDEX).exists() else None


def _progress(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and isinstance(state.get("done"), dict) else {}
