"""The `deit` command: `deit models`, `deit convert`.

Flag names follow the official DeiT `main.py` where the concept exists. Errors in what the user gave (a missing
file, a checkpoint of another model, a bad value) print one line and exit with status 2; set DEIT_DEBUG=1 to see
the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


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
        with FlopCounterMode(display=False) as counter:
            model(x)
        params = sum(p.numel() for p in model.parameters())
        table.add_row(
            name, f"{params / 1e6:.2f}M", f"{counter.get_total_flops() / 2e9:.3g}", f"{spec.img_size} px",
            "yes" if spec.distilled else "no", spec.description,
        )  # fmt: skip
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .models import create_model, export_weights

    model = create_model(args.model, pretrained=args.src)
    out = export_weights(model, args.dst, args.to)
    print(f"wrote {out} ({args.to} format, {model.model_name or type(model).__name__}, "
          f"{model.num_classes} classes, {model.hparams['img_size']} px)")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deit", description="Data-efficient Image Transformers: train, distill, use.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered models with parameters and GFLOPs")
    p.add_argument("filter", nargs="?", default="", help="only names containing this text")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("convert", help="convert weights between deit, timm and HF transformers layouts")
    p.add_argument("src", help="weights in any supported format (file or folder)")
    p.add_argument("dst", help="output: a folder (deit, hf) or a .safetensors/.pth file (timm; deit also)")
    p.add_argument("--to", required=True, choices=("deit", "timm", "hf"), help="output layout")
    p.add_argument("--model", default=None, help="architecture name, when the checkpoint does not make it clear")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # bad input: one line, no traceback wall
        if os.environ.get("DEIT_DEBUG"):
            raise
        print(f"deit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
