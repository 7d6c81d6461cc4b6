"""Throughput of our DeiT models against timm's same-named models, with the same weights, in one run.

Forward (eval, inference mode) and forward+backward (train mode, cross-entropy on random labels) images/s. Both
models read the same parameter tensors. The two implementations are timed in interleaved repeats (the order
alternating each round); the ratio is the median over rounds of timm's time over ours, so a noisy machine moves
both alike. On CUDA, bf16 autocast; `--compile` compiles both.

    python benchmarks/bench_models.py                      # deit_tiny and deit_small, batch 32, 224 px
    python benchmarks/bench_models.py --device cuda --batch-size 256 --compile

Results go to benchmarks/results/bench_models_<machine>_<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without an install
from deit import create_model
from deit.benchmark import save_record
from deit.distributed import cpu_name


def keep_freed_memory() -> None:
    """Re-run this script with glibc told to keep freed memory (Linux, CPU runs).

    A step allocates activations of up to ~20 MB. By default glibc serves some of them from fresh mmap pages and
    returns them at free, so a step pays page faults whose number depends on the allocator's history in this
    process, not on the model code: it moved one implementation against the other by up to 10% from one process
    to the next. Keeping freed memory in the heap removes that noise for both alike.
    """
    if sys.platform == "linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(32 << 20), MALLOC_TRIM_THRESHOLD_=str(4 << 30))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def machine_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def share_parameters(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Make `ours` use the very tensors of `reference`. Where a model's weights sit in memory alone moves CPU timings
    by up to 10% here (whichever model is built first wins); sharing them leaves only the code to compare."""
    for key, param in reference.named_parameters():
        module, _, leaf = key.rpartition(".")
        (ours.get_submodule(module) if module else ours)._parameters[leaf] = param


def make_step(model, mode: str, x: torch.Tensor, y: torch.Tensor, autocast):
    """A function that runs one timed step of `mode` on `model`."""
    if mode == "forward":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                model(x)

    else:
        model.train()

        def step():
            with autocast():
                out = model(x)
                logits = out[0] if isinstance(out, tuple) else out
                loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            for p in model.parameters():
                p.grad = None

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per implementation (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile both implementations")
    parser.add_argument("--modes", nargs="+", default=["forward", "forward+backward"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON result")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()

    if args.device != "cuda" and not (args.device == "auto" and torch.cuda.is_available()):
        keep_freed_memory()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def autocast():
        return torch.autocast("cuda", dtype=dtype) if device.type == "cuda" else contextlib.nullcontext()

    machine = machine_name(device)
    print(
        f"{machine} | torch {torch.__version__} | timm {timm.__version__} | {dtype} | batch {args.batch_size}"
        f"{' | compiled' if args.compile else ''} | threads {torch.get_num_threads()}"
    )
    results = []
    for name in args.models:
        torch.manual_seed(0)
        reference = timm.create_model(name).to(device)
        ours = create_model(name).to(device)
        ours.load_state_dict(reference.state_dict(), strict=True)  # proves the names and shapes match
        share_parameters(ours, reference)
        size = ours.hparams["img_size"]
        x = torch.randn(args.batch_size, 3, size, size, device=device)
        y = torch.randint(0, ours.num_classes, (args.batch_size,), device=device)
        with torch.inference_mode():
            diff = (ours.eval()(x[:2]) - reference.eval()(x[:2])).abs().max().item()
        print(f"{name}: max |ours - timm| on the same weights, fp32 eval: {diff:.2e}")
        models = {"ours": ours, "timm": reference}
        if args.compile:
            models = {k: torch.compile(m) for k, m in models.items()}
        for mode in args.modes:
            steps = {k: make_step(m, mode, x, y, autocast) for k, m in models.items()}
            times = {k: [] for k in steps}
            for round_ in range(args.warmup + args.repeats):
                order = list(steps) if round_ % 2 == 0 else list(steps)[::-1]
                for key in order:
                    sync(device)
                    start = time.perf_counter()
                    steps[key]()
                    sync(device)
                    if round_ >= args.warmup:
                        times[key].append(time.perf_counter() - start)
            rate = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
            # Rounds are paired: the ratio within a round is immune to the machine slowing down between rounds.
            ratio = statistics.median(t / o for t, o in zip(times["timm"], times["ours"]))
            print(f"  {mode:17s} ours {rate['ours']:9.1f} img/s | timm {rate['timm']:9.1f} img/s | ratio {ratio:.3f}")
            results.append(
                {
                    "model": name,
                    "mode": mode,
                    "ours_img_s": rate["ours"],
                    "timm_img_s": rate["timm"],
                    "ratio": ratio,
                    "ours_seconds": times["ours"],
                    "timm_seconds": times["timm"],
                }
            )
    if args.no_save:
        return
    record = {
        "benchmark": "bench_models_compiled" if args.compile else "bench_models",
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "device": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": args.batch_size,
        "compiled": args.compile,
        "repeats": args.repeats,
        "results": results,
    }
    save_record(record, args.out)


if __name__ == "__main__":
    main()
