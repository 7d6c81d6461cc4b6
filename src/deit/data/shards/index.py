"""A split's shards: `index.json` (its format and every check on it) or a brace pattern (counted before it is
expanded), as a `Split` of shard files, sample counts and class names."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...messages import first_line
from .tar import count_samples

log = logging.getLogger("deit")


INDEX = "index.json"


FORMAT, VERSION = "deit-shards", 1


SPLITS = ("train", "val")


SHARD_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*\.tar$")  # a plain file name beside the index: no folders, no ".."


SEEK_EVERY = 256  # samples between the byte offsets the index keeps per shard


# Bounds on what a user's files and patterns may ask for (docs/safety.md): past one, a line saying so, exit code 2
MAX_SHARDS = 100_000  # per split or pattern: 25 TB of 256 MB shards


MAX_PATTERN = 4096  # characters in a brace pattern, and 32 levels of braces


MAX_INDEX_BYTES = 64 * 2**20  # an index lists each shard's name, count and offsets: ImageNet's takes 200 KB


MAX_CLASSES = 1_000_000


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
    from ...files import read_json

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
    owner: dict[str, str] = {}  # shard name -> the split listing it
    for split, entry in splits.items():
        problem = _split_problem(split, entry, len(names), owner)
        if problem:
            return problem
    return None


def _split_problem(split: str, entry, num_classes: int, owner: dict[str, str]) -> str | None:
    shards = entry.get("shards") if isinstance(entry, dict) else None
    if not isinstance(shards, list) or not shards:
        return f"split {split} lists no shards"
    if len(shards) > MAX_SHARDS:
        return f"split {split} lists {len(shards):,} shards, over the {MAX_SHARDS:,} a split may have"
    every = entry.get("seek_every", SEEK_EVERY)
    if not (_count(every, 10**9) and every >= 1):
        return f"split {split}: seek_every={_shown(every)} is not a positive count of samples"
    for shard in shards:
        problem = _shard_problem(split, shard, every, owner)
        if problem:
            return problem
    total = sum(s["samples"] for s in shards)
    if entry.get("samples") != total:
        return f"split {split}: samples={_shown(entry.get('samples'))} is not the sum of its shards' counts"
    counts = entry.get("class_counts")
    if counts is not None and not (
        isinstance(counts, list)
        and len(counts) == num_classes
        and all(_count(c, 10**9) for c in counts)
        and sum(counts) == total
    ):
        return f"split {split}: class_counts must give each of the {num_classes} classes a count, {total} in all"
    if not isinstance(entry.get("labels_digest"), str):
        return f"split {split}: no labels_digest"
    return None


def _shard_problem(split: str, shard, every: int, owner: dict[str, str]) -> str | None:
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
    files = pattern_files(path)
    indexed = indexed_split(files)
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


def pattern_files(path: str) -> list[Path]:
    files = [Path(p) for p in expand(str(path))]
    if len(set(files)) != len(files):
        twice = next(f for f in files if files.count(f) > 1)
        raise ValueError(f"the pattern {path} names {twice} twice: its samples would count twice")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"shard {missing[0]} not found ({len(missing)} of the {len(files)} files of {path} missing)")
    return files


def indexed_split(files: list[Path]) -> Split | None:
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
