"""How a command ends: every failure a user can cause or meet becomes one line naming the problem and the fix.

Exit codes, for every command:
- 0: done;
- 1: part of the work failed (some inputs unreadable, a full disk, a run whose loss became NaN, out of memory);
- 2: bad usage or input (a flag, a config value, a missing or corrupt file, weights of another model): nothing done;
- 130: interrupted (Ctrl-C, or SIGTERM as `kill`, `timeout` and job schedulers send it).

A failure that is none of these is a bug: one line too, saying so; DEIT_DEBUG=1 shows its traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
# How torch says an allocation failed: CUDA's and the CPU allocator's words, the CPU allocator under a memory limit
# (`ulimit -v`, RLIMIT_DATA), and a loader process the kernel's OOM killer ended
OUT_OF_MEMORY = (
    "out of memory",
    "can't allocate memory",
    "alloc_cpu.cpp",
    "DefaultCPUAllocator",
    "is killed by signal: Killed",
)


def printable(text: str) -> str:
    """`text` with control characters (terminal escape codes, newlines) written as escapes: printed as it is, a
    hostile class name or file name could move the cursor, recolour the terminal or forge a second line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def first_line(error: BaseException) -> str:
    """An exception as one line: its type and its message's first sentence (libraries write paragraphs)."""
    text = str(error).strip().split("\n")[0].split(". ")[0][:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def say_error(command: str, message: str) -> None:
    print(f"deit {command}: error: {printable(message)}", file=sys.stderr)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does: the same clean stop (files closed, worker and lane
    processes ended, the last checkpoint kept) whichever way a run is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def loader_worker_init(worker_id: int) -> None:
    """`worker_init_fn` of every DataLoader: a loader process stops on SIGTERM as on Ctrl-C, quietly. A job
    scheduler or `timeout` signals the whole process group; a worker killed by the signal would make the training
    process print a traceback about it while it stops. And the thread through which a worker hands its batches'
    memory over prints a traceback when the training process is gone mid-handover: that is the stop, not news."""
    signal.signal(signal.SIGTERM, _interrupt)
    threading.excepthook = _quiet_when_the_peer_is_gone


def _quiet_when_the_peer_is_gone(args) -> None:
    if not issubclass(args.exc_type, (ConnectionError, EOFError)):
        threading.__excepthook__(args)


def run_command(command: str, func: Callable[[], int]) -> int:
    """Run one command; its failure becomes one line on stderr and an exit code (see the module's docstring)."""
    from .engine import NonFiniteLoss
    from .files import WriteError

    debug = bool(os.environ.get("DEIT_DEBUG"))
    try:
        with sigterm_as_interrupt():
            return func()
    except KeyboardInterrupt:
        print(f"deit {command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader of our output went away (`| head`): nothing left to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED
    except (NonFiniteLoss, WriteError) as e:
        if debug:
            raise
        say_error(command, str(e))
        return FAILED
    except (ValueError, OSError) as e:
        if debug:
            raise
        say_error(command, _os_message(e) if isinstance(e, OSError) else str(e))
        return BAD_INPUT
    except MemoryError:
        if debug:
            raise
        say_error(command, "out of memory; lower --batch-size, or use a smaller model or fewer loader processes")
        return FAILED
    except Exception as e:
        if debug:
            raise
        text = first_line(e)
        if isinstance(e, RuntimeError) and any(sign in str(e) for sign in OUT_OF_MEMORY):
            say_error(command, f"out of memory ({text}); lower --batch-size or --num_workers, or use a smaller model")
            return FAILED
        say_error(command, f"internal error, a bug in deit: {text} (DEIT_DEBUG=1 shows where)")
        return FAILED


def _os_message(e: OSError) -> str:
    if e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e)
