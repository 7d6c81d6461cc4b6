"""One process per GPU (or CPU rank) under `torchrun`: NCCL on GPUs, gloo on CPUs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous for several nodes); without them, one process.
Also the device each process computes on, and its precision (bf16 autocast or fp32).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, env: DistEnv) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {preference}: no CUDA device is visible; use --device cpu")
        return torch.device("cuda", env.local_rank) if env.enabled or preference == "cuda" else torch.device(preference)
    if preference != "cpu":
        raise ValueError(f"--device {preference!r}: auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup(preference: str) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        env = DistEnv()
        return env, resolve_device(preference, env)
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(preference, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return env, device


def share_cpu_cores(num_workers: int) -> None:
    """CPU training: leave one core to each data loader process, so compute threads are not preempted mid-kernel
    (measured on 2 cores with 2 loader processes: 1 compute thread trains the demo's student 10% faster than 2).
    An explicit OMP_NUM_THREADS, and torchrun's one thread per process, are kept."""
    if "OMP_NUM_THREADS" in os.environ or num_workers == 0:
        return
    torch.set_num_threads(threads_beside(num_workers))


def threads_beside(num_workers: int) -> int:
    """Compute threads that leave a core to each of `num_workers` loader processes (at least one)."""
    return max(1, (os.cpu_count() or 1) - num_workers)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (in place; a no-op in one process)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cpu_name() -> str:
    """This machine's processor, its family and model where Linux gives them, and its core count, e.g. "AMD EPYC
    (family 23, model 49), 2 cores" (for reports and benchmark records): a virtual machine's "AMD EPYC" names
    processors of several generations, whose speed and rounding differ."""
    import platform
    from pathlib import Path

    cpu, fields = platform.processor() or platform.machine() or "cpu", {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not line.strip():  # the first processor's block only
                break
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name") or cpu
    if fields.get("cpu family", "").isdigit() and fields.get("model", "").isdigit():
        cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{cpu}, {os.cpu_count()} cores"


def machine() -> str:
    """The machine and torch version a measurement ran on, as benchmark results and reports name it."""
    return f"{cpu_name()}, torch {torch.__version__.split('+')[0]}"


# bf16 autocast on CUDA by default; fp32 on the CPU, where bf16 matmuls are slower
PRECISIONS = ("auto", "bf16", "fp32")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting on a device; None for fp32."""
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast when asked for, else nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
