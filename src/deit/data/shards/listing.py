"""The shards a user names on `deit predict`'s command line: how many samples they hold, and each sample's image."""

from __future__ import annotations

import os
from collections.abc import Iterator

from .index import expand, indexed_split, pattern_files
from .tar import IMAGE_KEYS, Tally, count_samples, tar_samples


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
        files = pattern_files(path)
        indexed = indexed_split(files)
        total += indexed.samples if indexed is not None else sum(count_samples(f)[0] for f in files)
    return total
