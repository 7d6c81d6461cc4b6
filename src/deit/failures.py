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
import sys
from collections.abc import Callable

from .messages import first_line, printable
from .stopping import sigterm_as_interrupt

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


def say_error(command: str, message: str) -> None:
    print(f"deit {command}: error: {printable(message)}", file=sys.stderr)


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
