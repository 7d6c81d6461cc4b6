"""Files that are never half written, and folders that one process writes at a time.

Every file is written through a temporary file of the writing process in the same folder, flushed to disk and
renamed over the old one: a crash, a kill or a full disk leaves the previous complete file. A folder is owned by
the process holding its `.deit.lock`, taken with `flock`: the kernel releases it when the process ends in any way
(a kill, a crash), so a stale lock is simply taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .messages import first_line

log = logging.getLogger("deit")

LOCK = ".deit.lock"
TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what a plain open() would give: temporary files are created 0600


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(OSError):
    """A file could not be written (full disk, quota, file size limit, I/O error); the previous file is intact."""

    def __init__(self, path: Path, cause: BaseException):
        reason = str(cause).strip().splitlines()[0][:160] if str(cause).strip() else type(cause).__name__
        code = getattr(cause, "errno", None)
        super().__init__(code or errno.EIO, reason)
        if code is None or code in NO_SPACE:  # torch's and safetensors' writers say no more than "write failed"
            fix = f"{_free_space(path.parent)} free on its disk: free some space or choose another folder"
        else:
            fix = "choose another folder"
        self.message = f"cannot write {path} ({reason}); {fix}. Nothing was overwritten"

    def __str__(self) -> str:
        return self.message


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "?"  # pragma: no cover


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(tmp)`: a temporary file of this process beside it, flushed to disk, renamed.

    A crash, a kill or a full disk never leaves half a file, nor a temporary name another process would trip over.
    A failure to write (OSError, or the writer's own error: torch and safetensors do not raise OSError) becomes a
    `WriteError` naming the file and the free space; the writer's other errors pass through.
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise WriteError(path, e) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename: a power cut leaves the old file or the new one
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) or type(e).__name__ in ("RuntimeError", "SafetensorError"):
            raise WriteError(path, e) from None
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class JSONFileError(ValueError):
    """A JSON file a user gave that cannot be read within its bounds; the message names the file and the problem,
    the caller adds the fix."""


def read_json(path: str | os.PathLike, limit: int):
    """The JSON value in `path`, read only when the file is at most `limit` bytes: a hostile file can neither fill
    the memory (its size is checked before a byte is read) nor the stack (nesting deeper than the parser's
    recursion limit is refused, where it would end in a RecursionError)."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise JSONFileError(f"{path} is {size:,} bytes, over the {limit:,} such a file may take")
    try:
        with open(path, "rb") as f:
            text = f.read(limit + 1).decode()
        return json.loads(text)
    except RecursionError:
        raise JSONFileError(f"{path} nests its values too deeply to be read") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise JSONFileError(f"{path} is not valid JSON ({first_line(e)})") from None


class FolderBusy(ValueError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """The exclusive lock of a folder (`.deit.lock`), held while a run, a teacher cache or a demo writes there.

    Taken with `flock`: the kernel drops it when its process ends, however it ends, so the lock of a killed run is
    taken over by the next one. The file names its holder (command, pid, host, start) for the refusal message.
    Taking the lock also removes the temporary files that killed writers left of the files the holder `owns` (glob
    patterns of names; nobody else writes them, and nothing else in the folder is touched).
    """

    def __init__(self, folder: str | os.PathLike, purpose: str, owns: tuple[str, ...] = ()):
        self.folder, self.purpose, self.owns = Path(folder), purpose, owns
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl

        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder} is a file, not a folder; choose another folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot write into {self.folder} ({e.strerror}); choose another folder") from None
        path = self.folder / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusy(
                    f"{self.folder} is in use by {_holder(path)}; wait for it to finish, or choose another folder"
                ) from None
            except OSError as e:  # a file system without locks (some network mounts): write unlocked, say so
                log.warning(
                    f"{self.folder}: this file system does not lock files ({e.strerror}); nothing stops "
                    "another run from writing here at the same time"
                )
                break
            # the previous holder removes the file as it leaves: make sure the file locked is the one in place
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        holder = {
            "command": self.purpose,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self._fd = fd
        for pattern in self.owns:  # left by a writer killed mid-write: `atomic_write` names them .NAME.XXXXXXXX.tmp
            for stale in self.folder.glob(f".{pattern}.????????{TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is None:
            return
        (self.folder / LOCK).unlink(missing_ok=True)  # before unlocking: a waiter then locks a fresh file
        os.close(self._fd)
        self._fd = None


def lock_holder(folder: str | os.PathLike) -> str | None:
    """Who holds `folder`'s lock now, as a refusal names them ("deit train (pid 12 on host, since ...)"), or None
    when nobody does or this process does. The lock file is probed, not created or taken."""
    import fcntl

    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # dropped again as the file closes
    except BlockingIOError:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if int(json.loads(path.read_text())["pid"]) == os.getpid():
                return None
        return _holder(path)
    except OSError:  # a file system without locks: nobody can be seen holding one
        return None
    finally:
        os.close(fd)
    return None


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"{holder['command']} (pid {int(holder['pid'])} on {holder['host']}, since {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def slug(text: str, sep: str = "-") -> str:
    """A name for files and folders: "AMD EPYC, 2 cores" -> "amd-epyc-2-cores"."""
    return re.sub(r"[^a-z0-9]+", sep, text.lower()).strip(sep)
