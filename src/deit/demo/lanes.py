"""Runs side by side: a few processes (lanes), each taking up job after job, the machine's cores shared among them,
one progress bar per run; however the demo ends, no process of it outlives it."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from ..checkpoint import read_log
from ..config import TrainConfig
from ..stopping import sigterm_as_interrupt
from ..train import make_teacher_cache, run
from .plan import Job


def train_side_by_side(jobs: list[Job], out: Path, lanes: int | None = None) -> dict[str, dict]:
    """Run the jobs in `lanes` processes at once, the machine's cores shared among them, each when the jobs it
    reads (`after`) are done, in list order; one progress bar each, fed by its log (a cache: by its epoch files).
    Returns name -> {**row, "train_seconds"} and, for a training run, acc1, n_parameters and its log.

    However this ends (done, a run's failure, Ctrl-C, SIGTERM), no process of it outlives it.
    """
    import multiprocessing

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cores = os.cpu_count() or 1
    lanes = max(1, min(lanes or min(cores, 4), len(jobs)))
    columns = [
        TextColumn("{task.description:<36}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    pending, running, seconds, free, workers, told = list(jobs), {}, {}, [], [], False
    try:
        # one process per lane, each taking up job after job: torch is imported once per lane, not once per run
        context = multiprocessing.get_context("spawn")
        for _ in range(lanes):
            ours, theirs = context.Pipe()
            process = context.Process(target=_lane, args=(theirs, max(1, cores // lanes)))
            process.start()
            theirs.close()
            workers.append((process, ours))
        free = list(workers)
        with Progress(*columns, transient=False) as bar:
            tasks = {job.name: bar.add_task(job.name, total=job.cfg.run.epochs, info="waiting") for job in jobs}
            while pending or running:
                for job in [j for j in pending if all(a in seconds for a in j.after)]:
                    if free:
                        pending.remove(job)
                        worker = free.pop()
                        worker[1].send((job.cfg, job.cache_only))
                        running[job.name] = (job, worker, time.perf_counter())
                time.sleep(0.5)
                for name, (job, worker, started) in list(running.items()):
                    bar.update(tasks[name], **_progress(job, out))
                    if _ended(worker, name, out):
                        del running[name]
                        seconds[name] = round(time.perf_counter() - started, 1)
                        free.append(worker)
        for _, pipe in free:  # done: each lane ends when told
            with contextlib.suppress(OSError):
                pipe.send(None)
        told = True
    finally:
        _stop([process for process, _ in workers], wait=2.0 if told else 0.0)
    done = {}
    for job in jobs:
        done[job.name] = {**job.row, "train_seconds": seconds[job.name]}
        if not job.cache_only:
            log = read_log(out / job.name / "log.jsonl")
            done[job.name].update(acc1=log[-1]["test_acc1"], n_parameters=log[-1]["n_parameters"], log=log)
    return done


def _progress(job: Job, out: Path) -> dict:
    """How far a running job is: a cache by its epoch files, a training run by its log."""
    if job.cache_only:
        return {"completed": len(list(Path(job.cfg.distill.teacher_cache).glob("epoch_*"))), "info": "teacher outputs"}
    log = read_log(out / job.name / "log.jsonl")
    return {"completed": len(log), "info": f"top-1 {log[-1]['test_acc1']:.1f}%" if log else "starting"}


def _ended(worker: tuple, name: str, out: Path) -> bool:
    """Whether the lane's job has ended; a failure raised: bad input as a one-line error, anything else as a bug."""
    process, pipe = worker
    if process.is_alive() and not pipe.poll():
        return False
    try:
        outcome = pipe.recv() if pipe.poll() else ("error", "bug", f"exit code {process.exitcode}")
    except EOFError:  # it ended as it answered
        outcome = ("error", "bug", f"exit code {process.exitcode}")
    if outcome[0] != "ok":
        kind = ValueError if outcome[1] == "input" else RuntimeError
        raise kind(f"the {name} run failed: {outcome[2]} (its output: {out / name / 'train.out'})")
    return True


def _stop(processes: list, grace: float = 10.0, wait: float = 0.0) -> None:
    """SIGTERM to each still running (a clean stop: its loader processes end with it), SIGKILL to any still alive
    after `grace` seconds. Lanes told to end get `wait` seconds to end by themselves first."""
    deadline = time.monotonic() + wait
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _lane(jobs, threads: int) -> None:
    """A lane of the demo: runs (cfg, cache_only) jobs from the `jobs` pipe one after the other, `threads` compute
    threads, each run's output in its train.out; answers each with ("ok",) or ("error", "input" | "bug", message).
    Ends on None, when the demo's end of the pipe closes, or with the demo's process."""
    import multiprocessing

    _end_with_parent()
    # this process was spawned (a clean start); its loader processes are forked, as those of `deit train` are:
    # spawned ones import torch again, and take seconds to start and to stop
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    with contextlib.suppress(KeyboardInterrupt), sigterm_as_interrupt():
        while True:
            try:
                job = jobs.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            result = _train_quietly(*job)
            with contextlib.suppress(OSError):  # the demo may be gone
                jobs.send(result)
            if result[2:] == ("interrupted",):
                return


def _train_quietly(cfg: TrainConfig, cache_only: bool = False) -> tuple:
    """One run, its output (Python's and the file descriptors') in its folder's train.out; what happened."""
    folder = Path(cfg.run.output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "train.out", "w") as f:
            # the file descriptors too: what torch or a loader process prints stays out of the demo's terminal
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            (make_teacher_cache if cache_only else run)(cfg)
        return ("ok",)
    except KeyboardInterrupt:
        return ("error", "input", "interrupted")
    except (ValueError, OSError) as e:
        return ("error", "input", str(e))
    except BaseException as e:
        return ("error", "bug", f"{type(e).__name__}: {e}")


def _end_with_parent() -> None:
    """Linux: this process gets SIGTERM when the demo's process ends, even killed with SIGKILL."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
