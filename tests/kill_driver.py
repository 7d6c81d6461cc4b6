"""Runs `deit ARGS...` and kills itself with SIGKILL at a chosen moment (for tests/test_kill.py).

DEIT_KILL_AT=KIND:N picks the moment, the N-th event of its kind in this process:
- step: an optimizer step, after the backward pass and before the weights change (mid-step);
- write: a file about to replace its previous version (checkpoint, log, config, teacher cache), cut to half its
  length first (mid-write: a temporary file half written, never renamed);
- cache: a batch of the teacher's outputs computed for the teacher cache, before its epoch is stored (mid-cache).
DEIT_EVENTS=FILE: the events of each kind this process went through, written as JSON when it ends normally.
"""

import atexit
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from torch.optim.optimizer import register_optimizer_step_pre_hook

import deit.distill.cache
from deit.cli import main

kind, _, count = os.environ.get("DEIT_KILL_AT", ":").partition(":")
target = int(count) if count else None
events = {"step": 0, "write": 0, "cache": 0}


def event(name: str, before_death=None) -> None:
    events[name] += 1
    if name == kind and events[name] == target:
        if before_death is not None:
            before_death()
        os.kill(os.getpid(), signal.SIGKILL)


register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: event("step"))

real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    event("write", lambda: os.truncate(src, os.path.getsize(src) // 2))
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace

real_entries = deit.distill.cache.TeacherCache.entries


def entries(self, *args, **kwargs):
    event("cache")
    return real_entries(self, *args, **kwargs)


deit.distill.cache.TeacherCache.entries = entries

if os.environ.get("DEIT_EVENTS"):
    atexit.register(lambda: Path(os.environ["DEIT_EVENTS"]).write_text(json.dumps(events)))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
