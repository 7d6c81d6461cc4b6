"""How a process stops on SIGTERM: as on Ctrl-C, quietly, in the main process and in its loader processes."""

from __future__ import annotations

import contextlib
import signal
import threading


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
