"""Presets and overrides: a YAML file read within its bounds, dotted flag values merged onto it, and the fields'
help texts for the flags."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import yaml

from ..models.metadata import show_value

MAX_YAML_BYTES = 2**20  # a preset is a few KB


MAX_YAML_VALUES = 100_000  # values in the document with its aliases expanded: a preset has about a hundred


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size:,} bytes, over the {MAX_YAML_BYTES:,} a config may take")
    try:
        values = yaml.safe_load(path.read_text())
        if _values_over(values, MAX_YAML_VALUES):  # aliases of aliases name 10^9 values in a few lines
            raise ValueError(
                f"{path} holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) are expanded; a config "
                "needs far fewer"
            )
    except RecursionError:
        raise ValueError(f"{path} nests its values too deeply to be read") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (not UTF-8); a preset is YAML text") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of sections (model:, data:, ...)")
    return values


def _values_over(value, budget: int) -> bool:
    """Whether `value` holds more than `budget` values, counting a shared (aliased) one each time it appears; stops
    counting at the budget."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def merge(base: dict, overrides: dict[str, object]) -> tuple[dict, set[str]]:
    """Apply dotted overrides ("optim.lr": 1e-3) to nested values; returns the values and every dotted name set."""
    for section, values in base.items():
        if values is not None and not isinstance(values, dict):
            raise ValueError(
                f"config section {show_value(section)} must be a mapping of field: value, not {show_value(values)}"
            )
    merged = {section: dict(values or {}) for section, values in base.items()}
    explicit = {f"{section}.{key}" for section, values in merged.items() for key in values}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        merged.setdefault(section, {})[key] = value
        explicit.add(dotted)
    return merged, explicit


@functools.cache
def field_docs(section_cls) -> dict[str, str]:
    """Field docstrings (the string literal after each field), for --help texts (read once per process: finding a
    class's source parses its whole module)."""
    import ast
    import inspect
    import textwrap

    docs = {}
    for cls in reversed([c for c in section_cls.__mro__ if dataclasses.is_dataclass(c)]):  # a base's fields too
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
            ):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs
