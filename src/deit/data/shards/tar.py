"""Reading a tar shard: its samples as webdataset groups them (`{key}.{ext}` members sharing a key), each member's
size checked in its header before it is read."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...messages import first_line
from ..images import IMAGE_EXTENSIONS

log = logging.getLogger("deit")


IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


# Bounds on what a user's files and patterns may ask for (docs/safety.md): past one, a line saying so, exit code 2
MAX_MEMBER_BYTES = 256 * 2**20  # a tar member read: an uncompressed 8-bit RGB image at Pillow's pixel limit


MAX_LABEL_BYTES = 64  # a .cls member: a class index as text


MAX_HEADER_BYTES = 2**16  # a member's extended header (a long name, pax records)


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
    labels = [label_of(sample.get("cls")) for sample in tar_samples(str(path), tally=tally, wanted=("cls",))]
    if tally.damage:
        raise ValueError(f"{path} is not a readable tar shard ({tally.damage})")
    if tally.report(str(path)):
        log.warning(tally.report(str(path)))
    return len(labels), labels


def label_of(data: bytes | None) -> int:
    """The class a .cls member holds; -1 when it is missing or not a number."""
    if data is None:
        return -1
    try:
        return int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return -1
