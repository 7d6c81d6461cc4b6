"""The `deit` command: `deit demo`, `deit train`, `deit cache-teacher`, `deit predict`, `deit attention`,
`deit eval`, `deit export`, `deit benchmark`, `deit models`, `deit convert`, `deit serve`, `deit shard`.

Flag names follow the official DeiT `main.py` where the concept exists. Errors in what the user gave (a missing
file, a checkpoint of another model, a bad value) print one line and exit with status 2; the exit codes of every
command are in `failures.py`. DEIT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .failures import run_command, say_error
from .messages import printable


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def count(minimum: int):
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 asking the system for a free one (the server's start-up line names it)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 1 to 65535, or 0 for a free one")
    return value


def cmd_models(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch.utils.flop_counter import FlopCounterMode

    from .models import MODELS, create_model

    table = Table(title="DeiT models (GFLOPs count a multiply-add as one, as the DeiT paper does)")
    for column in ("name", "params", "GFLOPs", "input", "distilled", "size"):
        table.add_column(column, justify="right" if column in ("params", "GFLOPs") else "left", no_wrap=True)
    for name, spec in MODELS.items():
        if args.filter and args.filter not in name:
            continue
        with torch.device("meta"):  # shapes only: no memory, no arithmetic
            model = create_model(name).eval()
            x = torch.empty(1, 3, spec.img_size, spec.img_size)
        with FlopCounterMode(display=False) as counter:  # every token through every block, as the paper counts
            model.forward_head(model.forward_features(x))  # (forward() skips the last block's patch tokens)
        params = sum(p.numel() for p in model.parameters())
        table.add_row(
            name,
            f"{params / 1e6:.2f}M",
            f"{counter.get_total_flops() / 2e9:.3g}",
            f"{spec.img_size} px",
            "yes" if spec.distilled else "no",
            spec.description,
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    return 0


SAVED_MODEL = ["model.safetensors", "config.json", "preprocessor_config.json"]  # what convert writes in a folder


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import check_output
    from .interop import FILE_SUFFIXES, export_for
    from .models import create_model

    dst = Path(args.dst)
    folder = args.to == "hf" or dst.suffix not in FILE_SUFFIXES
    check_output(args.src, dst, SAVED_MODEL if folder else None)
    model = create_model(args.model, pretrained=args.src)
    out = export_for(model, args.dst, args.to)
    print(
        f"wrote {out} ({args.to} format, {model.model_name or type(model).__name__}, "
        f"{model.num_classes} classes, {model.hparams['img_size']} px)"
    )
    return 0


# Flags whose official DeiT spelling is not the field name with dashes.
FLAG_NAMES = {"output_dir": "--output_dir", "num_workers": "--num_workers", "three_augment": "--ThreeAugment"}


def _flag(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _parse_type(annotation: str):
    names = [part.strip() for part in annotation.split("|")]
    base = {"int": int, "float": float, "str": str, "bool": bool}[next(n for n in names if n != "None")]
    if "None" not in names:
        return base

    def optional(text: str):
        return None if text.lower() in ("none", "null") else base(text)

    optional.__name__ = base.__name__
    return optional


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section; a flag not given leaves the field to the preset/default."""
    from dataclasses import MISSING, fields

    from .config import SECTIONS, field_docs

    for section, section_cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} (YAML section `{section}:`)")
        docs = field_docs(section_cls)
        for f in fields(section_cls):
            default = f.default if f.default is not MISSING else None
            help_text = f"{docs.get(f.name, '')} [{section}.{f.name}, default {default}]".strip()
            kwargs = dict(dest=f"{section}.{f.name}", default=argparse.SUPPRESS, help=help_text)
            if f.type == "bool":
                group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            else:
                group.add_argument(_flag(f.name), type=_parse_type(f.type), metavar=f.name.upper(), **kwargs)


def _train_config(args: argparse.Namespace):
    """The run's config: a preset (--config), or a resumed run's own, with the flags on top."""
    from .checkpoint import saved_config
    from .config import TrainConfig, load_yaml, merge

    overrides = {k: v for k, v in vars(args).items() if "." in k}
    if args.config:
        base = load_yaml(args.config)
    elif overrides.get("run.resume"):
        base = saved_config(overrides["run.resume"])  # continue the run as it was configured, in its folder
    else:
        base = {}
    values, explicit = merge(base, overrides)
    return TrainConfig.from_dict(values, explicit)


def cmd_train(args: argparse.Namespace) -> int:
    from . import train

    cfg = _train_config(args)
    (train.evaluate_only if cfg.run.eval else train.run)(cfg)
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from .train import make_teacher_cache

    result = make_teacher_cache(_train_config(args))
    done = "made" if result["filled"] else "already complete"
    print(f"teacher cache {result['teacher_cache']}: {result['epochs']} epochs, {done}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        data_set=args.data_set,
        data_path=args.data_path,
        output_dir=args.output_dir,
        quick=args.quick,
        seed=args.seed,
        vit_teacher=args.vit_teacher,
        num_workers=args.num_workers,
        lanes=args.lanes,
    )
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import datetime

    from .benchmark import PARTS, run_benchmark, save_record

    record = run_benchmark(
        preset=args.preset,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        rounds=args.rounds,
        steps=args.steps,
        compile_models=args.compile,
        num_workers=args.num_workers,
        data_images=args.data_images,
        parts=tuple(args.parts),
    )
    if args.out:  # a subset of the parts is named by them: a script running parts one by one keeps each record
        subset = "" if set(args.parts) == set(PARTS) else "_" + "-".join(args.parts)
        name = f"deit_benchmark_{args.preset}{subset}{'_compiled' if args.compile else ''}"
        save_record({"benchmark": name, "date": datetime.date.today().isoformat(), **record}, args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import check_output
    from .export import export_model
    from .models import create_model

    check_output(args.weights, args.output)
    model = create_model(args.model, pretrained=args.weights)
    result = export_model(model, args.output, args.format)
    checked = (
        f", matches PyTorch within {result['max_abs_diff']:.1e} in onnxruntime at batch "
        f"{' and '.join(map(str, result['checked_batches']))}"
    )
    print(f"wrote {result['path']} ({args.format}, {model.model_name or 'deit'}, {model.num_classes} classes{checked})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import itertools
    import json

    from .data.images import image_files
    from .data.shards.index import is_pattern
    from .data.shards.listing import count_in, samples_of
    from .models import create_model
    from .predict import predict

    model = create_model(args.model, pretrained=args.weights)
    shards = [a for a in args.images if is_pattern(a)]  # .tar shards and brace patterns of them
    files = image_files([a for a in args.images if not is_pattern(a)])
    total = len(files) + (count_in(shards) if shards else 0)
    if not total:
        raise ValueError(f"no images ({', '.join(args.images)}) to predict")
    predictions, errors = predict(
        model,
        itertools.chain(files, samples_of(shards)),
        topk=args.topk,
        batch_size=args.batch_size,
        show_progress=total > args.batch_size and sys.stderr.isatty(),
        total=total,
    )
    for line in errors:
        say_error("predict", line)
    if args.json:
        for p in predictions:
            print(json.dumps(p.to_dict(), allow_nan=False))
    else:
        for p in predictions:
            shown = "  ".join(f"{printable(label)} {prob:.1%}" for label, prob in zip(p.labels, p.probabilities))
            print(f"{printable(p.path)}\t{shown}")
    return 1 if errors else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from .serve import Model, check_bind, check_token_text, compute_threads, create_app, serve, serving_model

    check_token_text(args.token)
    check_bind(args.host, args.token, args.no_auth)
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("deit serve needs its extra: pip install 'deit[serve]'") from None
    threads = compute_threads(args.threads)
    torch.set_num_threads(threads)
    model = serving_model(args.weights, args.model, args.backend, threads=threads)
    app = create_app(Model(model, str(args.weights), topk=args.topk), max_batch=args.max_batch, token=args.token)
    serve(app, args.host, args.port)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluation_report, write_report
    from .models import create_model

    model = create_model(args.model, pretrained=args.weights)
    report = evaluation_report(
        model, args.data_set, args.data_path, batch_size=args.batch_size, num_workers=args.num_workers
    )
    worst = sorted(report["per_class_acc1"].items(), key=lambda kv: kv[1])[:3]
    unreadable = f" ({report['unreadable']} unreadable images left out)" if report["unreadable"] else ""
    print(
        f"{report['images']} images of {args.data_set}{unreadable}: top-1 {report['acc1']:.2f}%  top-5 "
        f"{report['acc5']:.2f}%; weakest classes: {', '.join(f'{printable(k)} {v:.1f}%' for k, v in worst)}"
    )
    if args.output_dir:
        written = write_report(report, args.output_dir)
        print(f"wrote {', '.join(map(str, written))}")
    return 1 if report["unreadable"] else 0


def cmd_attention(args: argparse.Namespace) -> int:
    from .data.images import image_files
    from .explain import attention_pictures
    from .models import create_model

    model = create_model(args.model, pretrained=args.weights)
    written, errors = attention_pictures(model, image_files(args.images), Path(args.output))
    for line in errors:
        say_error("attention", line)
    print(f"wrote {len(written)} heat-map picture(s) to {args.output}")
    return 1 if errors else 0


def model_command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A sub-command that works on a trained model: --weights (any format) and --model."""
    p = sub.add_parser(name, help=help_text, allow_abbrev=False)
    p.add_argument("--weights", required=True, help="a checkpoint of `deit train`, or DeiT weights in any format")
    p.add_argument("--model", default=None, help="architecture name, when the weights do not make it clear")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="deit", description="Data-efficient Image Transformers: train, distill, use.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_models(sub)
    _add_training(sub)
    _add_benchmark(sub)
    _add_model_use(sub)
    _add_shard(sub)
    parser.commands = sub.choices  # name -> the command's parser
    return parser


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="what distillation is for, on shipped digits in minutes on a CPU: few labels, a CNN teacher",
        description="For 10, 100 and all labels per class: a CNN teacher on the labelled images, the same small "
        "DeiT on them alone, and distilled (hard, hard + attention) on them and the unlabelled rest; with every "
        "label, the paper's Table 3 (soft too). Writes report.md, results.json, curve.png and pictures.",
        allow_abbrev=False,
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
    p.set_defaults(func=cmd_demo)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with parameters and GFLOPs")
    p.add_argument("filter", nargs="?", default="", help="only names containing this text")
    p.set_defaults(func=cmd_models)


def _add_training(sub) -> None:
    for name, func, short, long in (
        (
            "train",
            cmd_train,
            "train a DeiT (or a CNN teacher), with or without distillation",
            "Train as the DeiT paper does. Flags follow the official DeiT main.py; --config loads a YAML preset "
            "(configs/) and flags override it. Under torchrun, one process per GPU (DDP).",
        ),
        (
            "cache-teacher",
            cmd_cache_teacher,
            "run the teacher once over a training run's views and store its outputs for students to read",
            "Takes the flags of `deit train` (the student's run: data, augmentation, seed, epochs, batch, "
            "distillation) plus --teacher-path and --teacher-cache DIR. Students trained with the same flags and "
            "--teacher-cache DIR read the teacher's outputs instead of running it. An unfinished cache is completed.",
        ),
    ):
        p = sub.add_parser(name, help=short, description=long, allow_abbrev=False)
        p.add_argument("--config", default=None, help="YAML preset: sections model, data, aug, optim, distill, run")
        add_config_flags(p)
        p.set_defaults(func=func)


def _add_benchmark(sub) -> None:
    from .benchmark import PARTS
    from .distributed import PRECISIONS

    p = sub.add_parser(
        "benchmark",
        help="time inference, the train step, distilled steps (teacher online / cached) and the data pipeline "
        "against timm, in one run",
        allow_abbrev=False,
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
    p.set_defaults(func=cmd_benchmark)


def _add_model_use(sub) -> None:
    """The commands that work on a trained model: predict, attention, eval, export, convert."""
    from .export import FORMATS as EXPORT_FORMATS
    from .models.weights import LAYOUTS as WEIGHTS_LAYOUTS
    from .serve import BACKENDS as SERVE_BACKENDS

    p = model_command(sub, "predict", "top-k classes of images or folders of images with a trained model")
    p.add_argument(
        "images", nargs="+", help="image files, folders (searched recursively), .tar shards or patterns of them"
    )
    p.add_argument("--topk", type=count(1), default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image: path, top-k labels, probabilities")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.set_defaults(func=cmd_predict)

    p = model_command(sub, "attention", "heat maps of where a model looks: rollout, class (and distillation) token")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs (<image name>_attention.png)")
    p.set_defaults(func=cmd_attention)

    p = model_command(sub, "eval", "top-1/top-5, per-class accuracy and a confusion matrix on a data set")
    p.add_argument("--data-set", required=True, help="imagenet, folder or wds (with --data-path), or a built-in")
    p.add_argument(
        "--data-path", default=None, help="the folder holding val/<class>/ images; wds: a shard folder or pattern"
    )
    p.add_argument("--output_dir", default=None, help="write eval.json and confusion.png here")
    p.add_argument("--batch-size", type=count(1), default=128)
    p.add_argument("--num_workers", type=count(0), default=2)
    p.set_defaults(func=cmd_eval)

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
    p.set_defaults(func=cmd_serve)

    p = model_command(
        sub, "export", "a trained model as ONNX, checked in onnxruntime (safetensors: deit convert --to deit)"
    )
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    p.add_argument("-o", "--output", required=True, help="the .onnx file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="convert weights between deit, timm and HF transformers layouts")
    p.add_argument("src", help="weights in any supported format (file or folder)")
    p.add_argument("dst", help="output: a folder (deit, hf) or a .safetensors/.pth file (timm; deit also)")
    p.add_argument("--to", required=True, choices=WEIGHTS_LAYOUTS, help="output layout")
    p.add_argument("--model", default=None, help="architecture name, when the checkpoint does not make it clear")
    p.set_defaults(func=cmd_convert)


def _add_shard(sub) -> None:
    p = sub.add_parser(
        "shard",
        help="write a folder of images (or a built-in data set) as WebDataset tar shards for --data-set wds",
        description="Writes SRC's train/ and val/ class folders (or a folder of class folders, or a built-in data "
        "set) as OUT/{split}-NNNNNN.tar, each image's own bytes with its class, shuffled across shards, and "
        "OUT/index.json (class names, samples per shard). Interrupted, it keeps the shards it finished.",
        allow_abbrev=False,
    )
    p.add_argument("src", help="a folder with train/ and val/ class folders, a folder of class folders, or a built-in")
    p.add_argument("out", help="the folder for the shards and index.json")
    p.add_argument("--split", choices=("train", "val"), default=None, help="write this split only (default: both)")
    p.add_argument("--shard-size", default="256MB", help="the most bytes per shard (e.g. 256MB, 1GB)")
    p.add_argument("--seed", type=count(0), default=0, help="the shuffle of samples across shards")
    p.add_argument("--data-path", default=None, help="the files of a built-in that needs them (cifar10, ...)")
    p.set_defaults(func=cmd_shard)


def cmd_shard(args: argparse.Namespace) -> int:
    from .data.datasets import shard_sources
    from .data.shards.writer import parse_size, write_split

    size = parse_size(args.shard_size)
    out = Path(args.out)
    for split, items, names in shard_sources(args.src, args.split, args.data_path):
        entry = write_split(
            items,
            names,
            out,
            split,
            shard_size=size,
            seed=args.seed,
            source=str(args.src),
            show_progress=sys.stderr.isatty(),
        )
        total = sum(s["bytes"] for s in entry["shards"])
        left = f", {entry['left_out']} unreadable files left out" if entry["left_out"] else ""
        print(
            f"{split}: {entry['samples']:,} images of {len(names)} classes in {len(entry['shards'])} shards "
            f"({total / 1e6:,.1f} MB) in {out}{left}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser: "deit train: error: unrecognized arguments: ..."
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
