"""Timing in interleaved rounds (paired ratios, so a machine that slows down moves both sides alike), the lines
and records a measurement leaves, and `Bench`: what every part of a benchmark run measures with."""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write, slug


def save_record(record: dict, out_dir: str | Path) -> Path:
    """Write `record` as <out_dir>/<benchmark>_<machine>_<date>.json and say where."""
    out = Path(out_dir) / f"{record['benchmark']}_{slug(record['machine'])}_{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    print(f"saved {out}")
    return out


def paired_rates(steps: dict[str, Callable[[], None]], images: int, rounds: int, warmup: int, sync) -> dict:
    """Time each step `rounds` times, alternating the order; images/s (median) per step and paired ratios."""
    times = {k: [] for k in steps}
    for round_ in range(warmup + rounds):
        for key in list(steps) if round_ % 2 == 0 else list(steps)[::-1]:
            sync()
            start = time.perf_counter()
            steps[key]()
            sync()
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
    rates = {k: images / statistics.median(v) for k, v in times.items()}
    return {"img_s": rates, "times": times}


def ratio(times: dict, ours: str, baseline: str) -> float:
    """Median over rounds of baseline time / our time: > 1 means ours is faster."""
    return statistics.median(b / o for b, o in zip(times[baseline], times[ours]))


@dataclass
class Bench:
    """One benchmark run: its settings, and what every part measures with."""

    cfg: dict  # the preset
    dev: torch.device
    amp: contextlib.AbstractContextManager  # bf16 autocast, or nothing
    batch_size: int
    steps: int  # per timed step
    rounds: int
    num_workers: int
    compiled: bool
    x: torch.Tensor  # a stand-in batch and its targets
    y: torch.Tensor
    models: dict[str, torch.nn.Module]  # ours, timm's (and both compiled)
    optimizers: dict | None = None  # keyed as the models are, without " compiled"

    @property
    def student(self) -> str:
        """The model of ours that a distilled step trains: compiled when the run compiles."""
        return "ours compiled" if self.compiled else "ours"

    @property
    def baseline(self) -> str:
        return "timm compiled" if self.compiled else "timm"

    def sync(self) -> None:
        sync_device(self.dev)


def sync_device(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def no_sync() -> None:
    """For passes that sync at their own end (a whole loader pass)."""


def _run_steps(fn: Callable[[], None], steps: int) -> None:
    for _ in range(steps):
        fn()


def repeated(fn: Callable[[], None], steps: int) -> Callable[[], None]:
    """`fn` run `steps` times as one timed step."""
    return functools.partial(_run_steps, fn, steps)


def report(name: str, measured: dict, ours_key: str, base_key: str) -> dict:
    """Print one measurement's line; its entry in the record's results."""
    r = ratio(measured["times"], ours_key, base_key)
    line = "  ".join(f"{k} {v:,.0f} img/s" for k, v in measured["img_s"].items())
    print(f"{name:34s} {line}  | {ours_key} / {base_key}: {r:.2f}x")
    return {"measurement": name, "img_s": measured["img_s"], "ratio": r, "ours": ours_key, "baseline": base_key}


def report_pairs(name: str, measured: dict, compiled: bool) -> list[dict]:
    """Ours against timm, eager; with compiled models also compiled against compiled and against timm eager."""
    results = [report(name, measured, "ours", "timm")]
    if compiled:
        results.append(report(name + ", compiled", measured, "ours compiled", "timm compiled"))
        results.append(report(name + ", ours compiled vs timm eager", measured, "ours compiled", "timm"))
    return results
