"""WebDataset shards: writing a data set as tar shards (`deit shard`, with webdataset's writer) and streaming them
to training, evaluation and prediction (our reader: webdataset's sample format, each member's size checked in its
header before it is read).

A shard holds `{key}.{ext}` (the image file's own bytes: jpg, png, tif, ...) and `{key}.cls` (the class index as
text) per sample. `index.json` beside the shards names the classes and, per split, each shard's sample count, so a
run knows its epoch length before it reads a byte. A sample's id is its place in the split: the shards in the
index's order, the samples in each shard's order.

An epoch of training is exact across a job: the shards are put in an order drawn from (seed, epoch) and read as one
sequence; process r of W takes the r-th contiguous block of steps x batch samples of it, and each of its loader
workers a contiguous run of whole batches of that block (a block may start or end inside a shard: that shard is
read by both, each keeping its own samples). Every sample is then seen once per epoch (the last world x batch - 1 at
most left out, another tail each epoch, as `drop_last` does), every process runs the same number of steps, and the
order is a function of (seed, epoch, processes, workers, batch, shuffle buffer): a resumed run repeats it. A
worker's samples pass a shuffle buffer seeded from (seed, epoch, process, worker); each sample is augmented under a
seed drawn from (seed, epoch, its id), as `sampling.py` does for positions, so a view does not depend on the order.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import string
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate

from ..messages import first_line
from .images import IMAGE_EXTENSIONS, read_image
from .sampling import Batch, collate_readable, sample_seed, seeded

log = logging.getLogger("deit")

INDEX = "index.json"
FORMAT, VERSION = "deit-shards", 1
SPLITS = ("train", "val")
IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
SHARD_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*\.tar$")  # a plain file name beside the index: no folders, no ".."
DEFAULT_SHUFFLE = 2000
SEEK_EVERY = 256  # samples between the byte offsets the index keeps per shard

# Bounds on what a user's files and patterns may ask for (docs/safety.md): past one, a line saying so, exit code 2
MAX_SHARDS = 100_000  # per split or pattern: 25 TB of 256 MB shards
MAX_PATTERN = 4096  # characters in a brace pattern, and 32 levels of braces
MAX_INDEX_BYTES = 64 * 2**20  # an index lists each shard's name, count and offsets: ImageNet's takes 200 KB
MAX_CLASSES = 1_000_000
MAX_MEMBER_BYTES = 256 * 2**20  # a tar member read: an uncompressed 8-bit RGB image at Pillow's pixel limit
MAX_LABEL_BYTES = 64  # a .cls member: a class index as text
MAX_HEADER_BYTES = 2**16  # a member's extended header (a long name, pax records)


def is_pattern(path: str) -> bool:
    """A brace pattern or a .tar file, rather than a folder with an index."""
    return "{" in path or str(path).endswith(".tar")


def expand(pattern: str) -> list[str]:
    """The paths a brace pattern names (`train-{000000..000009}.tar`), counted before they are made: a pattern
    naming more than MAX_SHARDS files is refused, where expanding it would fill the memory."""
    from braceexpand import braceexpand

    count = pattern_count(pattern)
    if count > MAX_SHARDS:
        raise ValueError(
            f"the pattern {pattern[:80]} names {count:,} files, over the {MAX_SHARDS:,} shards a split may have: "
            "give the range of the shards that exist"
        )
    return list(braceexpand(pattern))


_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_LETTERS = string.ascii_uppercase + string.ascii_lowercase


def pattern_count(pattern: str) -> int:
    """How many strings the braceexpand library makes of `pattern` (its grammar: `{a,b}` alternatives, `{1..10}`,
    `{01..10..2}` and `{a..e}` ranges, nesting, backslash escapes), from the sizes of its parts alone."""
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"a shard pattern of {len(pattern):,} characters: at most {MAX_PATTERN} are read")
    return _product_count(pattern, 0)


def _scan(text: str) -> tuple[list[tuple[int, int]], list[int], int]:
    """The top-level {...} groups of `text` as (start, end), its top-level commas, and the brace depth at its end
    (0 when balanced); a backslash escapes the character after it."""
    groups, commas, depth, start, pos = [], [], 0, 0, 0
    while pos < len(text):
        ch = text[pos]
        if ch == "\\":
            pos += 2
            continue
        if ch == "{":
            start = pos if depth == 0 else start
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                groups.append((start, pos))
        elif ch == "," and depth == 0:
            commas.append(pos)
        pos += 1
    return groups, commas, depth


def _product_count(text: str, level: int) -> int:
    if level > 32:
        raise ValueError("a shard pattern with more than 32 levels of braces")
    groups, _, depth = _scan(text)
    if depth != 0:
        raise ValueError(f"unbalanced braces in the shard pattern {text[:80]!r}")
    count = 1
    for start, end in groups:
        count *= _expression_count(text[start + 1 : end], level + 1)
    return count


def _expression_count(expr: str, level: int) -> int:
    if match := _INT_RANGE.match(expr):
        a, b, step = int(match.group(1)), int(match.group(2)), int(match.group(3) or 1) or 1
        return len(range(a, b + 1, step) if a < b else range(a, b - 1, -step))
    if match := _CHAR_RANGE.match(expr):
        a, b, step = _LETTERS.index(match.group(1)), _LETTERS.index(match.group(2)), int(match.group(3) or 1) or 1
        return len(_LETTERS[a : b + 1 : step] if a < b else _LETTERS[a : (b or -len(_LETTERS)) - 1 : -step])
    _, commas, depth = _scan(expr)
    if not commas or depth != 0:
        return _product_count(expr, level)  # not alternatives: its braces stay as text around what they hold
    bounds = [-1, *commas, len(expr)]
    return sum(_product_count(expr[a + 1 : b], level) for a, b in zip(bounds, bounds[1:]))


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


# -- the index ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardFile:
    path: str
    samples: int
    seeks: tuple[int, ...] = ()
    """Byte offsets of samples 0, SEEK_EVERY, 2 x SEEK_EVERY, ... (from the index): a reader starting inside the
    shard seeks to the nearest one instead of reading what comes before."""


@dataclass
class Split:
    """A split stored as shards: its files in order, their sample counts, the class names, a digest of the labels."""

    shards: list[ShardFile]
    class_names: list[str]
    labels_digest: str
    where: str  # the index or pattern it came from, for messages
    counted: bool = False
    """No index lists these shards: counted from the files, their classes are the .cls indices ("0", "1", ...)."""

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def labels_digest(labels: Iterable[int]) -> str:
    return hashlib.sha256(json.dumps([int(t) for t in labels]).encode()).hexdigest()[:16]


def read_index(folder: Path) -> dict:
    """The index of a shard folder, checked: hostile or damaged values are a ValueError naming the file."""
    from ..files import read_json

    path = folder / INDEX
    if not path.is_file():
        raise ValueError(
            f"no {INDEX} in {folder}: write shards with `deit shard SRC {folder}`, or give --data-path a pattern "
            "such as 'shards/train-{000000..000009}.tar'"
        )
    try:
        index = read_json(path, MAX_INDEX_BYTES)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a shard index ({first_line(e)}); write it again with deit shard") from None
    bad = _index_problem(index)
    if bad:
        raise ValueError(f"{path}: {bad}; write it again with deit shard")
    return index


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _count(value, top: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top


def _index_problem(index) -> str | None:
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        return f"not a {FORMAT} index"
    if index.get("version") != VERSION:
        return f"version {_shown(index.get('version'))}, this deit reads version {VERSION}"
    names = index.get("class_names")
    if not (isinstance(names, list) and 2 <= len(names) <= MAX_CLASSES):
        return f"class_names must be a list of at least two names (at most {MAX_CLASSES:,})"
    if not all(isinstance(n, str) and 0 < len(n) <= 1000 for n in names):
        return "class_names must be non-empty strings of at most 1,000 characters"
    if len(set(names)) != len(names):
        return "class_names repeat a name"
    splits = index.get("splits")
    if not isinstance(splits, dict) or not splits or any(s not in SPLITS for s in splits):
        return f"splits must map {' and/or '.join(SPLITS)} to their shards"
    owner: dict[str, str] = {}
    for split, entry in splits.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, list) or not shards:
            return f"split {split} lists no shards"
        if len(shards) > MAX_SHARDS:
            return f"split {split} lists {len(shards):,} shards, over the {MAX_SHARDS:,} a split may have"
        every = entry.get("seek_every", SEEK_EVERY)
        if not (_count(every, 10**9) and every >= 1):
            return f"split {split}: seek_every={_shown(every)} is not a positive count of samples"
        for shard in shards:
            if not isinstance(shard, dict) or not isinstance(shard.get("name"), str):
                return f"split {split}: a shard without a name"
            name = shard["name"]
            if not SHARD_NAME.match(name):
                return f"split {split}: shard name {name[:60]!r} is not a plain .tar file name"
            if name in owner:  # read twice, its samples would count twice (or leak from val into train)
                return f"shard {name} is listed twice (in {owner[name]} and in {split})"
            owner[name] = split
            n = shard.get("samples")
            if not _count(n, 10**9):
                return f"split {split}: shard {name} has samples={_shown(n)}, not a count"
            seeks = shard.get("seeks", [])
            if not (
                isinstance(seeks, list)
                and all(_count(o, 2**62) for o in seeks)
                and (not seeks or (seeks[0] == 0 and len(seeks) == -(-n // every)))
                and all(a < b for a, b in zip(seeks, seeks[1:]))
            ):
                return f"split {split}: shard {name} has seeks that are not its samples' offsets"
        total = sum(s["samples"] for s in shards)
        if entry.get("samples") != total:
            return f"split {split}: samples={_shown(entry.get('samples'))} is not the sum of its shards' counts"
        counts = entry.get("class_counts")
        if counts is not None and not (
            isinstance(counts, list)
            and len(counts) == len(names)
            and all(_count(c, 10**9) for c in counts)
            and sum(counts) == total
        ):
            return f"split {split}: class_counts must give each of the {len(names)} classes a count, {total} in all"
        if not isinstance(entry.get("labels_digest"), str):
            return f"split {split}: no labels_digest"
    return None


def open_split(path: str, split: str) -> Split:
    """The shards of `split` in a folder with an index, or the shards a brace pattern (or one .tar) names: their
    counts from the index beside them when it lists exactly those files, else counted from the files."""
    if not is_pattern(path):
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"shard folder not found: {folder}")
        index = read_index(folder)
        if split not in index["splits"]:
            raise ValueError(
                f"{folder / INDEX} has no {split} split (it has {', '.join(index['splits'])}): write it with "
                f"`deit shard SRC {folder} --split {split}`"
            )
        return _from_index(folder, index, split)
    files = _pattern_files(path)
    indexed = _indexed(files)
    if indexed is not None:
        return indexed
    log.info(f"no index lists the {len(files)} shards of {path}: counting their samples")
    counts, labels = zip(*(count_samples(f) for f in files))
    flat = [t for ts in labels for t in ts]
    if not flat:
        raise ValueError(f"the shards of {path} hold no samples")
    bad = [t for t in flat if t < 0]
    if bad:
        raise ValueError(f"{path}: {len(bad)} samples have no readable .cls label; give shards with {{key}}.cls")
    if max(flat) >= MAX_CLASSES:  # the classes are the .cls indices: one of 10^9 would make a head of 10^9
        raise ValueError(f"{path}: a sample of class {max(flat):,}, over the {MAX_CLASSES:,} classes deit trains")
    names = [str(i) for i in range(max(max(flat) + 1, 2))]
    shards = [ShardFile(str(f), n) for f, n in zip(files, counts)]
    return Split(shards, names, labels_digest(flat), str(path), counted=True)


def _pattern_files(path: str) -> list[Path]:
    files = [Path(p) for p in expand(str(path))]
    if len(set(files)) != len(files):
        twice = next(f for f in files if files.count(f) > 1)
        raise ValueError(f"the pattern {path} names {twice} twice: its samples would count twice")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"shard {missing[0]} not found ({len(missing)} of the {len(files)} files of {path} missing)")
    return files


def _indexed(files: list[Path]) -> Split | None:
    """The split of the index beside `files` that lists them all (all of its shards, or some), if there is one."""
    folder = files[0].parent
    if not (all(f.parent == folder for f in files) and (folder / INDEX).exists()):
        return None
    index = read_index(folder)
    names = [f.name for f in files]
    for name, entry in index["splits"].items():
        listed = {s["name"]: s for s in entry["shards"]}
        if [s["name"] for s in entry["shards"]] == names:
            return _from_index(folder, index, name)
        if all(n in listed for n in names):  # some shards of a split: their counts; the digest names them
            digest = hashlib.sha256(json.dumps([entry["labels_digest"], names]).encode()).hexdigest()[:16]
            same_spacing = entry.get("seek_every", SEEK_EVERY) == SEEK_EVERY
            shards = [
                ShardFile(str(f), listed[f.name]["samples"], tuple(listed[f.name].get("seeks", ())) * same_spacing)
                for f in files
            ]
            return Split(shards, list(index["class_names"]), digest, str(folder / INDEX))
    return None


def _from_index(folder: Path, index: dict, split: str) -> Split:
    entry = index["splits"][split]
    if entry.get("seek_every", SEEK_EVERY) != SEEK_EVERY:  # offsets at another spacing: read from the start
        entry = {**entry, "shards": [{k: v for k, v in s.items() if k != "seeks"} for s in entry["shards"]]}
    shards = [
        ShardFile(str(folder / s["name"]), s["samples"], tuple(s.get("seeks", ())))
        for s in entry["shards"]
        if s["samples"]
    ]
    missing = [s.path for s in shards if not os.path.isfile(s.path)]
    if missing:
        raise ValueError(
            f"{folder / INDEX} lists {missing[0]}, which is missing ({len(missing)} of {len(shards)} shards): copy "
            f"the shards beside the index, or write them again with deit shard"
        )
    counts = entry.get("class_counts")
    empty = sum(1 for c in counts if c == 0) if counts else 0
    if empty:  # a head of classes never seen: often an index edited by hand or written for another set
        log.warning(
            f"{folder / INDEX}: {empty:,} of its {len(counts):,} classes have no {split} samples; the model still "
            f"has {len(counts):,} outputs"
        )
    return Split(shards, list(index["class_names"]), entry["labels_digest"], str(folder / INDEX))


def sample_key(name: str) -> tuple[str, str] | None:
    """A tar member's (sample key, extension), split as webdataset splits it: at the first dot of the file name
    (any character, a newline included, may stand in a key)."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (folder + slash + stem, ext.lower()) if stem and dot and "/" not in ext else None


@dataclass
class Tally:
    """What a tar reader met besides samples: for the warning that names them."""

    damage: str | None = None  # why the tar stopped being readable
    oversized: int = 0  # members over their bound, left out of their samples
    strays: int = 0  # members that are not a sample's {key}.{ext} file (no extension, a link, a device)

    def report(self, path: str) -> str:
        parts = []
        if self.oversized:
            parts.append(
                f"{self.oversized} members over their bound ({MAX_MEMBER_BYTES // 2**20} MiB for an image, "
                f"{MAX_LABEL_BYTES} bytes for a .cls) left out"
            )
        if self.strays:
            parts.append(f"{self.strays} members that are not a sample's {{key}}.{{ext}} file left out")
        return f"{path}: {'; '.join(parts)}" if parts else ""


_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class _BoundedHeader(tarfile.TarInfo):
    """A member header whose extension (a long name, pax records), which tarfile reads whole, is at most
    MAX_HEADER_BYTES. `_proc_member` is tarfile's step from a header block to the member (unchanged since 2.x)."""

    def _proc_member(self, tar):
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"a member header of {self.size:,} bytes, over {MAX_HEADER_BYTES:,}")
        return super()._proc_member(tar)


def tar_samples(path: str, start: int = 0, *, tally: Tally, wanted: tuple[str, ...] | None = None) -> Iterator[dict]:
    """The samples of a tar shard, from byte `start` (where a member's header begins) on: a dict {"__key__",
    "__url__", ext: bytes, ...} for each run of members sharing a key, as webdataset groups them.

    Only members with an extension in `wanted` (images and .cls) are read, each only when its header says it is
    within its bound (MAX_MEMBER_BYTES, MAX_LABEL_BYTES for .cls); the others stand in their sample as None (an
    image over the bound: `__oversized__` says so). A damaged tar ends the stream, its error in `tally`."""
    wanted = wanted or (*IMAGE_KEYS, "cls")
    sample: dict | None = None
    try:
        with open(path, "rb") as f:
            f.seek(start)
            tar = tarfile.open(fileobj=f, mode="r:", tarinfo=_BoundedHeader)  # noqa: SIM115 (f is the file to close)
            while (member := tar.next()) is not None:
                tar.members.clear()  # read once, in order: no list of a long shard's headers
                parts = sample_key(member.name) if member.isreg() else None
                if parts is None:
                    tally.strays += not member.isdir()
                    continue
                key, ext = parts
                if key.rpartition("/")[2].startswith("__"):  # webdataset's metadata members (__index__, ...)
                    continue
                if sample is None or key != sample["__key__"] or ext in sample:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": path}
                bound = MAX_LABEL_BYTES if ext == "cls" else MAX_MEMBER_BYTES
                if ext in wanted and member.size > bound:
                    tally.oversized += 1
                    sample["__oversized__"] = f"{ext} member of {member.size:,} bytes, over the {bound:,} read"
                sample[ext] = tar.extractfile(member).read() if ext in wanted and member.size <= bound else None
    except (OSError, tarfile.TarError, EOFError) as e:
        tally.damage = first_line(e)
    if sample is not None:
        yield sample


def count_samples(path: Path) -> tuple[int, list[int]]:
    """Samples in one shard and their labels (-1 where a sample has no readable .cls), from the tar's headers and
    its .cls members only (the images are seeked over, not read)."""
    tally = Tally()
    labels = [_label(sample.get("cls")) for sample in tar_samples(str(path), tally=tally, wanted=("cls",))]
    if tally.damage:
        raise ValueError(f"{path} is not a readable tar shard ({tally.damage})")
    if tally.report(str(path)):
        log.warning(tally.report(str(path)))
    return len(labels), labels


def _label(data: bytes | None) -> int:
    if data is None:
        return -1
    try:
        return int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return -1


# -- reading: the epoch's plan -------------------------------------------------------------------------------------


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The order the shards are read in one epoch of training."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5A4D]))
    return rng.permutation(n_shards).tolist()


def pieces(sizes: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(shard, first, end) runs covering samples [start, stop) of the sequence made by shards of `sizes`, in order;
    `shard` is the place in `sizes`."""
    out, offset = [], 0
    for shard, size in enumerate(sizes):
        lo, hi = max(start, offset), min(stop, offset + size)
        if lo < hi:
            out.append((shard, lo - offset, hi - offset))
        offset += size
    return out


def train_steps(samples: int, world_size: int, batch_size: int) -> int:
    return samples // (world_size * batch_size)


def worker_span(count: int, worker: int, workers: int, unit: int = 1) -> tuple[int, int]:
    """Worker `worker`'s contiguous share [a, b) of `count` items handed out in whole units (batches)."""
    units = -(-count // unit)
    a, b = units * worker // workers, units * (worker + 1) // workers
    return min(a * unit, count), min(b * unit, count)


def train_span(samples: int, rank: int, world_size: int, batch_size: int, worker: int, workers: int):
    """Positions [a, b) of the epoch's (expanded) sequence that a training worker reads: whole batches only."""
    steps = train_steps(samples, world_size, batch_size)
    block = rank * steps * batch_size
    a, b = worker_span(steps * batch_size, worker, workers, batch_size)
    return block + a, block + b


def eval_span(samples: int, rank: int, world_size: int, worker: int, workers: int) -> tuple[int, int]:
    """Samples [a, b) a worker reads when every sample is read once (evaluation, a teacher cache)."""
    lo, hi = samples * rank // world_size, samples * (rank + 1) // world_size
    a, b = worker_span(hi - lo, worker, workers)
    return lo + a, lo + b


# -- reading: the streams ----------------------------------------------------------------------------------------


class ShardSet:
    """A split of shards as a data set: `len` samples, a `.transform` set by the run (as on the other data sets),
    and the epoch its streams read (shared with persistent loader workers)."""

    def __init__(self, split: Split, *, grayscale: bool, intensity: str = "minmax"):
        self.split, self.mode, self.intensity = split, "L" if grayscale else "RGB", intensity
        self.class_names = split.class_names
        self.transform: Callable | None = None
        self._epoch = multiprocessing.get_context().Value("q", 0, lock=False)
        self._offsets = np.cumsum([0] + [s.samples for s in split.shards]).tolist()

    def __len__(self) -> int:
        return self.split.samples

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def read(self, shard: int, first: int, end: int) -> Iterator[tuple[int, dict | None]]:
        """(id, sample as `tar_samples` gives it) for samples [first, end) of a shard; (id, None) for each sample the
        shard lacks (a damaged or short file is named in a warning, and the stream keeps its length)."""
        path = self.split.shards[shard].path
        seeks = self.split.shards[shard].seeks
        block = min(first // SEEK_EVERY, len(seeks) - 1) if seeks else 0  # start at the nearest recorded sample
        tally = Tally()
        stream = tar_samples(path, seeks[block] if block > 0 else 0, tally=tally)
        skip = first - block * SEEK_EVERY
        got = 0
        for got, sample in enumerate(itertools.islice(stream, skip, skip + end - first), start=1):
            yield self._offsets[shard] + first + got - 1, sample
        stream.close()
        if tally.report(path):
            log.warning(tally.report(path))
        if got < end - first:
            why = f": {tally.damage}" if tally.damage else ""
            log.warning(
                f"{path} ended after {first + got} samples, the index says {self.split.shards[shard].samples}{why}"
            )
            for k in range(first + got, end):
                yield self._offsets[shard] + k, None

    def sequence(self, order: list[int], start: int, stop: int) -> Iterator[tuple[int, dict | None]]:
        """Samples [start, stop) of the shards read in `order`."""
        sizes = [self.split.shards[i].samples for i in order]
        for place, first, end in pieces(sizes, start, stop):
            yield from self.read(order[place], first, end)

    def decode(self, sample: dict | None, sample_id: int) -> tuple[Image.Image, int]:
        """The image and class of a sample; ValueError naming it when either is missing or unreadable."""
        if sample is None:
            raise ValueError(f"sample {sample_id}: missing from its shard")
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', sample_id)}"
        ext = next((k for k in IMAGE_KEYS if sample.get(k) is not None), None)
        if ext is None:
            if "__oversized__" in sample:
                raise ValueError(f"{name}: its {sample['__oversized__']}")
            raise ValueError(f"{name}: no image ({', '.join(sorted(k for k in sample if not k.startswith('_')))})")
        target = _label(sample.get("cls"))
        if not 0 <= target < len(self.class_names):
            raise ValueError(
                f"{name}: class {(sample.get('cls') or b'')[:20]!r} is not one of the {len(self.class_names)}"
            )
        return read_image(io.BytesIO(sample[ext]), self.mode, self.intensity, name=f"{name}.{ext}"), target


@dataclass
class ShardOrder:
    """A training run's order over shards, in the place of a sampler: `set_epoch` moves every stream of the set."""

    shards: ShardSet
    seed: int
    rank: int
    world_size: int
    copies: int = 1
    shuffle: int = DEFAULT_SHUFFLE

    def set_epoch(self, epoch: int) -> None:
        self.shards.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.shards)

    def train_stream(self, batch_size: int, workers: int) -> TrainStream:
        return TrainStream(
            self.shards,
            **self._place(),
            batch_size=batch_size,
            workers=workers,
            copies=self.copies,
            shuffle=self.shuffle,
        )

    def cache_stream(self, batch_size: int, workers: int) -> CacheStream:
        return CacheStream(self.shards, **self._place(), batch_size=batch_size, workers=workers)

    def _place(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size}


def val_source(data_path: str) -> str:
    """Where the validation shards of a run training from `data_path` are: the val split of the index in the folder
    (the pattern's folder, for a pattern)."""
    if not is_pattern(data_path):
        return data_path
    folder = Path(expand(data_path)[0]).parent
    if (folder / INDEX).exists() and "val" in read_index(folder)["splits"]:
        return str(folder)
    raise ValueError(
        f"--data-path {data_path} names training shards and {folder} holds no index with a val split: give the "
        "validation shards with --val-path (a pattern, or a folder with an index)"
    )


class TrainStream(IterableDataset):
    """One process's training batches (`Batch`es) of an epoch of shards; see the module's docstring.

    `copies` > 1 is repeated augmentation: each sample read is used `copies` times in a row (before the shuffle
    buffer), each copy a view of its own (position copy x samples + id), and the epoch keeps its length.
    """

    def __init__(
        self,
        shards: ShardSet,
        *,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
        workers: int,
        copies: int = 1,
        shuffle: int = DEFAULT_SHUFFLE,
    ):
        self.shards, self.seed, self.rank, self.world_size = shards, seed, rank, world_size
        self.batch_size, self.workers, self.copies, self.shuffle = batch_size, max(workers, 1), copies, shuffle

    def __len__(self) -> int:
        return train_steps(len(self.shards), self.world_size, self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        import webdataset as wds

        worker = _worker(self.workers)
        epoch, n = self.shards.epoch, len(self.shards)
        a, b = train_span(n, self.rank, self.world_size, self.batch_size, worker, self.workers)
        order = shard_order(len(self.shards.split.shards), self.seed, epoch)
        c = self.copies
        read = self.shards.sequence(order, a // c, (b - 1) // c + 1 if b > a else a // c)
        views = (
            (k * n + sample_id, sample_id, sample)
            for d, (sample_id, sample) in enumerate(read, start=a // c)
            for k in range(c)
            if a <= d * c + k < b
        )
        if self.shuffle > 1:
            buffer_seed = int(
                np.random.SeedSequence([self.seed, epoch, self.rank, worker, 0x5B0F]).generate_state(1)[0]
            )
            views = wds.shuffle(self.shuffle, self.shuffle, rng=random.Random(buffer_seed))(views)
        batch = []
        for item in _substituted(self.shards, views, self.seed, epoch):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield Batch(*default_collate(batch))
                batch = []


def _substituted(shards: ShardSet, views, seed: int, epoch: int):
    """(view, target, skipped, position, id) per view: an unreadable sample is named once and replaced by the last
    readable one (by the next, before the first), augmented under its own seed, so the stream keeps its length."""
    last = None
    waiting = []
    for position, sample_id, sample in views:
        try:
            image, target = shards.decode(sample, sample_id)
            skipped = 0
            last = image, target
        except ValueError as e:
            if sample is not None:  # a sample the shard lacks was reported with the shard
                log.warning(f"skipping unreadable sample {e}")
            if last is None:
                waiting.append((position, sample_id))
                continue
            (image, target), skipped = last, 1
        for held_position, held_id in waiting:
            yield _view(shards, image, target, 1, held_position, held_id, seed, epoch)
        waiting = []
        yield _view(shards, image, target, skipped, position, sample_id, seed, epoch)
    if waiting:
        raise ValueError(f"none of {len(waiting)} samples of {shards.split.where} could be read")


def _view(shards: ShardSet, image, target, skipped, position, sample_id, seed, epoch):
    with seeded(sample_seed(seed, epoch, position)):
        view = shards.transform(image) if shards.transform else image
    return view, target, skipped, position, sample_id


class CacheStream(IterableDataset):
    """Every training view of an epoch once, in the index's order (`Batch`es, the last of each worker partial): the
    teacher's pass for a cache. Views are seeded by id, so they are the training stream's views in any layout."""

    def __init__(self, shards: ShardSet, *, seed: int, rank: int, world_size: int, batch_size: int, workers: int):
        self.shards, self.seed, self.rank, self.world_size = shards, seed, rank, world_size
        self.batch_size, self.workers = batch_size, max(workers, 1)

    def __len__(self) -> int:
        return _eval_batches(len(self.shards), self.rank, self.world_size, self.workers, self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        worker = _worker(self.workers)
        a, b = eval_span(len(self.shards), self.rank, self.world_size, worker, self.workers)
        order = list(range(len(self.shards.split.shards)))
        views = ((sample_id, sample_id, sample) for sample_id, sample in self.shards.sequence(order, a, b))
        items = _substituted(self.shards, views, self.seed, self.shards.epoch)
        for chunk in _chunks(items, self.batch_size):
            yield Batch(*default_collate(chunk))


class EvalStream(IterableDataset):
    """This process's share of a split for evaluation: (images, targets, unreadable) batches as `collate_readable`
    makes them; an unreadable sample is left out and counted, never replaced."""

    def __init__(self, shards: ShardSet, *, rank: int, world_size: int, batch_size: int, workers: int):
        self.shards, self.rank, self.world_size = shards, rank, world_size
        self.batch_size, self.workers = batch_size, max(workers, 1)

    def __len__(self) -> int:
        return _eval_batches(len(self.shards), self.rank, self.world_size, self.workers, self.batch_size)

    def __iter__(self):
        worker = _worker(self.workers)
        a, b = eval_span(len(self.shards), self.rank, self.world_size, worker, self.workers)
        order = list(range(len(self.shards.split.shards)))
        for chunk in _chunks(self.shards.sequence(order, a, b), self.batch_size):
            yield collate_readable([self._item(sample_id, sample) for sample_id, sample in chunk])

    def _item(self, sample_id: int, sample: dict | None):
        try:
            image, target = self.shards.decode(sample, sample_id)
        except ValueError as e:
            if sample is not None:
                log.warning(f"leaving out unreadable sample {e}")
            return None, -1, 1
        return (self.shards.transform(image) if self.shards.transform else image), target, 0


def _eval_batches(samples: int, rank: int, world_size: int, workers: int, batch_size: int) -> int:
    spans = (eval_span(samples, rank, world_size, w, workers) for w in range(workers))
    return sum(-(-(b - a) // batch_size) for a, b in spans)


def _worker(workers: int) -> int:
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0
    if info.num_workers != workers:
        raise RuntimeError(f"a shard stream built for {workers} loader workers runs under {info.num_workers}")
    return info.id


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def loader(stream: IterableDataset, options: dict) -> DataLoader:
    """A DataLoader over a stream that batches itself (its `len` is its batch count)."""
    options = {**options, "num_workers": stream.workers if options.get("num_workers") else 0}
    if not options["num_workers"]:
        options["persistent_workers"] = False
    return DataLoader(stream, batch_size=None, **options)


def samples_of(paths: list[str]) -> Iterator[tuple[str, bytes | ValueError]]:
    """(name, image bytes) of every sample of the shards at `paths` (patterns expanded), for `deit predict`; a
    sample without a readable image, and the members of a shard that are not samples' files, come as (name, the
    ValueError to report)."""
    for pattern in paths:
        for path in expand(pattern):
            if not os.path.isfile(path):
                raise ValueError(f"no such shard: {path}")
            tally = Tally()
            for sample in tar_samples(path, tally=tally):
                ext = next((k for k in IMAGE_KEYS if sample.get(k) is not None), None)
                name = f"{path}:{sample['__key__']}"
                if ext:
                    yield f"{name}.{ext}", sample[ext]
                else:
                    why = f"its {sample['__oversized__']}" if "__oversized__" in sample else "no image"
                    yield name, ValueError(f"{name}: {why}")
            if tally.strays:  # (a member over its bound was named with its sample)
                yield path, ValueError(Tally(strays=tally.strays).report(path))
            if tally.damage:
                raise ValueError(f"{path} is a damaged tar shard ({tally.damage})")


def count_in(paths: list[str]) -> int:
    """Samples in the shards at `paths` (labelled or not): from the index beside them when it lists them, else
    counted from the files."""
    total = 0
    for path in paths:
        files = _pattern_files(path)
        indexed = _indexed(files)
        total += indexed.samples if indexed is not None else sum(count_samples(f)[0] for f in files)
    return total


# -- writing -------------------------------------------------------------------------------------------------------


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
    import webdataset as wds

    from ..files import FolderLock, atomic_write, write_text
    from ..progress import progress

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
        state = _progress(state_path)
        if state.get("plan") != digest:
            stale = sorted(out.glob(f"{split}-*.tar"))
            if stale:
                raise ValueError(
                    f"{out} holds {split} shards written from another source or with other settings (seed, shard "
                    f"size): give another folder, or remove its {split}-*.tar to write them again"
                )
            state = {"plan": digest, "done": {}}
        names = [f"{split}-{k:06d}.tar" for k in range(len(plan))]
        bar, task = progress(f"shard {split}", len(items), show_progress)
        left_out = 0
        with bar:
            for k, (name, members) in enumerate(zip(names, plan)):
                done = state["done"].get(name)
                if done and (out / name).is_file() and (out / name).stat().st_size == done["bytes"]:
                    bar.advance(task, len(members))
                    continue
                labels: list[int] = []
                seeks: list[int] = []

                def write(tmp: Path, members=members, labels=labels, seeks=seeks, k=k) -> None:
                    with wds.TarWriter(str(tmp), encoder=False, mtime=0) as tar:
                        for j, i in enumerate(members):
                            item = items[i]
                            data = _checked(item)
                            bar.advance(task)
                            if data is None:
                                continue
                            if len(labels) % SEEK_EVERY == 0:
                                seeks.append(tar.tarstream.offset)  # where this sample's first member begins
                            key = f"{k:06d}{j:06d}_{_key_part(item.name)}"
                            tar.write({"__key__": key, item.ext: data, "cls": str(item.target).encode()})
                            labels.append(item.target)

                atomic_write(out / name, write)
                left_out += len(members) - len(labels)
                size = (out / name).stat().st_size
                state["done"][name] = {"samples": len(labels), "bytes": size, "seeks": seeks, "labels": labels}
                write_text(state_path, json.dumps(state))
        done = [state["done"][name] for name in names]
        entry = {
            "shards": [
                {"name": n, "samples": d["samples"], "bytes": d["bytes"], "seeks": d["seeks"]}
                for n, d in zip(names, done)
            ],
            "samples": sum(d["samples"] for d in done),
            "seek_every": SEEK_EVERY,
            "class_counts": np.bincount([t for d in done for t in d["labels"]], minlength=len(class_names)).tolist(),
            "labels_digest": labels_digest(t for d in done for t in d["labels"]),
            "seed": seed,
            "shard_size": shard_size,
            "source": source,
        }
        index = existing or {"format": FORMAT, "version": VERSION, "class_names": class_names, "splits": {}}
        index["splits"][split] = entry
        write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
        for stale in sorted(out.glob(f"{split}-*.tar")):
            if stale.name not in names:
                stale.unlink()
    entry["left_out"] = left_out
    return entry


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
