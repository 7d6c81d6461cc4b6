"""What each `deit` command does with its parsed arguments (`cmd_*`, each returning an exit code); the heavy
imports happen inside, so `deit --help` stays quick."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..failures import say_error
from ..messages import printable


def cmd_models(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import MODELS, create_model

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
    from ..checkpoint import check_output
    from ..interop import FILE_SUFFIXES, export_for
    from ..models import create_model

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


def _train_config(args: argparse.Namespace):
    """The run's config: a preset (--config), or a resumed run's own, with the flags on top."""
    from ..checkpoint import saved_config
    from ..config import TrainConfig, load_yaml, merge

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
    from .. import train

    cfg = _train_config(args)
    (train.evaluate_only if cfg.run.eval else train.run)(cfg)
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from ..train import make_teacher_cache

    result = make_teacher_cache(_train_config(args))
    done = "made" if result["filled"] else "already complete"
    print(f"teacher cache {result['teacher_cache']}: {result['epochs']} epochs, {done}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(
        **_given(
            args,
            "data_set",
            "data_path",
            "output_dir",
            "quick",
            "seed",
            "vit_teacher",
            "num_workers",
            "lanes",
            "student",
            "epochs",
        )
    )
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    import datetime

    from ..benchmark import PARTS, run_benchmark, save_record

    record = run_benchmark(
        **_given(args, "preset", "device", "precision", "batch_size", "rounds", "steps", "num_workers", "data_images"),
        compile_models=args.compile,
        parts=tuple(args.parts),
    )
    if args.out:  # a subset of the parts is named by them: a script running parts one by one keeps each record
        subset = "" if set(args.parts) == set(PARTS) else "_" + "-".join(args.parts)
        name = f"deit_benchmark_{args.preset}{subset}{'_compiled' if args.compile else ''}"
        save_record({"benchmark": name, "date": datetime.date.today().isoformat(), **record}, args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..checkpoint import check_output
    from ..export import export_model
    from ..models import create_model

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

    from ..data.images import image_files
    from ..data.shards.index import is_pattern
    from ..data.shards.listing import count_in, samples_of
    from ..models import create_model
    from ..predict import predict

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

    from ..serve import Model, check_bind, check_token_text, compute_threads, create_app, serve, serving_model

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
    from ..evaluation import evaluation_report, write_report
    from ..models import create_model

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
    from ..data.images import image_files
    from ..explain import attention_pictures
    from ..models import create_model

    model = create_model(args.model, pretrained=args.weights)
    written, errors = attention_pictures(model, image_files(args.images), Path(args.output))
    for line in errors:
        say_error("attention", line)
    print(f"wrote {len(written)} heat-map picture(s) to {args.output}")
    return 1 if errors else 0


def cmd_shard(args: argparse.Namespace) -> int:
    from ..data.datasets import shard_sources
    from ..data.shards.writer import parse_size, write_split

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


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The named flags' values, as keyword arguments of the same names."""
    return {name: getattr(args, name) for name in names}
