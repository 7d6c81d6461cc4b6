"""The command line's parts: the parser that says errors in one line, argparse types for counts and ports, and
`deit train`'s flags made from the config's fields (one per field, named as the official DeiT names them)."""

from __future__ import annotations

import argparse

from ..messages import printable


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


# Flags whose official DeiT spelling is not the field name with dashes.
FLAG_NAMES = {"output_dir": "--output_dir", "num_workers": "--num_workers", "three_augment": "--ThreeAugment"}


def flag_name(name: str) -> str:
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

    from ..config import SECTIONS, field_docs

    for section, section_cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} (YAML section `{section}:`)")
        docs = field_docs(section_cls)
        for f in fields(section_cls):
            default = f.default if f.default is not MISSING else None
            help_text = f"{docs.get(f.name, '')} [{section}.{f.name}, default {default}]".strip()
            kwargs = dict(dest=f"{section}.{f.name}", default=argparse.SUPPRESS, help=help_text)
            if f.type == "bool":
                group.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            else:
                group.add_argument(flag_name(f.name), type=_parse_type(f.type), metavar=f.name.upper(), **kwargs)


def command(sub, name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command whose flags are spelled out in full (no abbreviations: a new flag never changes an old one)."""
    return sub.add_parser(name, help=help_text, description=description, allow_abbrev=False)


def model_command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A sub-command that works on a trained model: --weights (any format) and --model."""
    p = command(sub, name, help_text)
    p.add_argument("--weights", required=True, help="a checkpoint of `deit train`, or DeiT weights in any format")
    p.add_argument("--model", default=None, help="architecture name, when the weights do not make it clear")
    return p
