"""The `deit` command line: each command's flags and help, and `main`."""

from __future__ import annotations

import argparse
import logging

from ..failures import run_command
from . import commands
from .flags import Parser, add_config_flags, command, count, model_command, port_number


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="deit", description="Data-efficient Image Transformers: train, distill, use.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_models(sub)
    _add_training(sub)
    _add_benchmark(sub)
    _add_model_use(sub)
    _add_serve(sub)
    _add_export(sub)
    _add_shard(sub)
    parser.commands = sub.choices  # name -> the command's parser
    return parser


def _add_demo(sub) -> None:
    p = command(
        sub,
        "demo",
        "what distillation is for, on shipped digits in minutes on a CPU: few labels, a CNN teacher",
        "For 10, 100 and all labels per class: a CNN teacher on the labelled images, the same small "
        "DeiT on them alone, and distilled (hard, soft + attention) on them and the unlabelled rest; with every "
        "label, the paper's Table 3 (soft too). Writes report.md, results.json, curve.png and pictures.",
    )
    p.add_argument("--data-set", default="mnist5k", help="a built-in (mnist5k, digits, fashion-mnist, ...) or folder")
    p.add_argument(
        "--data-path",
        default=None,
        help="the folder for --data-set folder (train/ and val/), or of Fashion-MNIST's files",
    )
    p.add_argument("--output_dir", default="demo_output", help="where runs, report and pictures go")
    p.add_argument("--quick", action="store_true", help="a minute-long smoke test of the whole pipeline")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--vit-teacher", action="store_true", help="add a row distilled from a transformer teacher")
    p.add_argument("--num_workers", type=count(0), default=2, help="data loader processes per run (folder data)")
    p.add_argument(
        "--lanes",
        type=count(1),
        default=None,
        help="runs trained at once, each lane a process of its own (default: one per core, at most 4)",
    )
    p.add_argument(
        "--student",
        default=None,
        help="a registered DeiT in place of deit_pico_patch7_28 (its distilled twin is the distilled students')",
    )
    p.add_argument(
        "--epochs",
        type=count(1),
        default=None,
        help="the students' epochs at every count of labels (default: 18, and 72 where fewer than 1 in 10 "
        "training images keep a label)",
    )
    p.set_defaults(func=commands.cmd_demo)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with parameters and GFLOPs")
    p.add_argument("filter", nargs="?", default="", help="only names containing this text")
    p.set_defaults(func=commands.cmd_models)


def _add_training(sub) -> None:
    for name, func, short, long in (
        (
            "train",
            commands.cmd_train,
            "train a DeiT (or a CNN teacher), with or without distillation",
            "Train as the DeiT paper does. Flags follow the official DeiT main.py; --config loads a YAML preset "
            "(configs/) and flags override it. Under torchrun, one process per GPU (DDP).",
        ),
        (
            "cache-teacher",
            commands.cmd_cache_teacher,
            "run the teacher once over a training run's views and store its outputs for students to read",
            "Takes the flags of `deit train` (the student's run: data, augmentation, seed, epochs, batch, "
            "distillation) plus --teacher-path and --teacher-cache DIR. Students trained with the same flags and "
            "--teacher-cache DIR read the teacher's outputs instead of running it. An unfinished cache is completed.",
        ),
    ):
        p = command(sub, name, short, long)
        p.add_argument("--config", default=None, help="YAML preset: sections model, data, aug, optim, distill, run")
        add_config_flags(p)
        p.set_defaults(func=func)


def _add_benchmark(sub) -> None:
    from ..benchmark import PARTS
    from ..distributed import PRECISIONS

    p = command(
        sub,
        "benchmark",
        "time inference, the train step, distilled steps (teacher online / cached) and the data pipeline "
        "against timm, in one run",
    )
    p.add_argument(
        "--preset",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: the demo's student and teacher; gpu: DeiT-S distilled from RegNetY-16GF, batch 256",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="auto (bf16 on CUDA, fp32 on the CPU), bf16 or fp32"
    )
    p.add_argument("--batch-size", type=count(1), default=None, help="the preset's unless given")
    p.add_argument("--rounds", type=count(1), default=5, help="timed rounds per implementation (median reported)")
    p.add_argument("--steps", type=count(1), default=5, help="steps per round")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--num_workers", type=count(0), default=2, help="data loader processes for the data pipeline part")
    p.add_argument(
        "--data-images", type=count(1), default=512, help="JPEGs held in memory for the data and end-to-end parts"
    )
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--out", default=None, help="a folder to save the JSON record in (e.g. benchmarks/results)")
    p.set_defaults(func=commands.cmd_benchmark)


def _add_model_use(sub) -> None:
    """The commands that read images with a trained model: predict, attention, eval."""

    p = model_command(sub, "predict", "top-k classes of images or folders of images with a trained model")
    p.add_argument(
        "images", nargs="+", help="image files, folders (searched recursively), .tar shards or patterns of them"
    )
    p.add_argument("--topk", type=count(1), default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image: path, top-k labels, probabilities")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.set_defaults(func=commands.cmd_predict)

    p = model_command(sub, "attention", "heat maps of where a model looks: rollout, class (and distillation) token")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs (<image name>_attention.png)")
    p.set_defaults(func=commands.cmd_attention)

    p = model_command(sub, "eval", "top-1/top-5, per-class accuracy and a confusion matrix on a data set")
    p.add_argument("--data-set", required=True, help="imagenet, folder or wds (with --data-path), or a built-in")
    p.add_argument(
        "--data-path", default=None, help="the folder holding val/<class>/ images; wds: a shard folder or pattern"
    )
    p.add_argument("--output_dir", default=None, help="write eval.json and confusion.png here")
    p.add_argument("--batch-size", type=count(1), default=128)
    p.add_argument("--num_workers", type=count(0), default=2)
    p.set_defaults(func=commands.cmd_eval)


def _add_serve(sub) -> None:
    """deit serve: a trained model behind a REST API."""
    from ..serve import BACKENDS as SERVE_BACKENDS

    p = model_command(sub, "serve", "a trained model behind a REST API: /v1/predict, /v1/attention, /v1/model")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on; another than this one needs --token")
    p.add_argument("--port", type=port_number, default=8000, help="0: a free port, named in the start-up line")
    p.add_argument("--max-batch", type=count(1), default=32, help="images of concurrent requests run together")
    p.add_argument("--topk", type=count(1), default=5)
    p.add_argument("--token", default=None, help="clients must send 'Authorization: Bearer TOKEN'")
    p.add_argument("--no-auth", action="store_true", help="serve a non-local --host without a token")
    p.add_argument(
        "--threads",
        type=count(1),
        default=None,
        help="compute threads of the model (default: the cores but one, which is left to HTTP and decoding)",
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=SERVE_BACKENDS,
        help="torch (any weights) or onnx (a file of deit export); default: onnx for a .onnx file, else torch",
    )
    p.set_defaults(func=commands.cmd_serve)


def _add_export(sub) -> None:
    """A trained model written for other tools: export (ONNX), convert (deit, timm and HF layouts)."""
    from ..export import FORMATS as EXPORT_FORMATS
    from ..models.weights import LAYOUTS as WEIGHTS_LAYOUTS

    p = model_command(
        sub, "export", "a trained model as ONNX, checked in onnxruntime (safetensors: deit convert --to deit)"
    )
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    p.add_argument("-o", "--output", required=True, help="the .onnx file")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("convert", help="convert weights between deit, timm and HF transformers layouts")
    p.add_argument("src", help="weights in any supported format (file or folder)")
    p.add_argument("dst", help="output: a folder (deit, hf) or a .safetensors/.pth file (timm; deit also)")
    p.add_argument("--to", required=True, choices=WEIGHTS_LAYOUTS, help="output layout")
    p.add_argument("--model", default=None, help="architecture name, when the checkpoint does not make it clear")
    p.set_defaults(func=commands.cmd_convert)


def _add_shard(sub) -> None:
    p = command(
        sub,
        "shard",
        "write a folder of images (or a built-in data set) as WebDataset tar shards for --data-set wds",
        "Writes SRC's train/ and val/ class folders (or a folder of class folders, or a built-in data "
        "set) as OUT/{split}-NNNNNN.tar, each image's own bytes with its class, shuffled across shards, and "
        "OUT/index.json (class names, samples per shard). Interrupted, it keeps the shards it finished.",
    )
    p.add_argument("src", help="a folder with train/ and val/ class folders, a folder of class folders, or a built-in")
    p.add_argument("out", help="the folder for the shards and index.json")
    p.add_argument("--split", choices=("train", "val"), default=None, help="write this split only (default: both)")
    p.add_argument("--shard-size", default="256MB", help="the most bytes per shard (e.g. 256MB, 1GB)")
    p.add_argument("--seed", type=count(0), default=0, help="the shuffle of samples across shards")
    p.add_argument("--data-path", default=None, help="the files of a built-in that needs them (cifar10, ...)")
    p.set_defaults(func=commands.cmd_shard)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser: "deit train: error: unrecognized arguments: ..."
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_command(args.command, lambda: args.func(args))
