"""How a config value is checked: made its field's annotated type, then held to its section's rules, each failure
one line naming the field, its value and the rule."""

from __future__ import annotations

import math
from dataclasses import fields

from ..models.metadata import show_value


def as_type(name: str, value, annotation: str):
    """`value` as the field's annotated type ("int", "float | None", ...); ValueError naming the field otherwise."""
    kinds = [part.strip() for part in annotation.split("|")]
    kind = next(k for k in kinds if k != "None")
    if value is None:
        if "None" in kinds:
            return None
        raise ValueError(f"{name} must be given (a {KIND_NAMES[kind]}), not null")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}={show_value(value)} must be true or false")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"{name}={show_value(value)} must be a string")
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string; a number written as text is a number
        try:
            value = int(value) if kind == "int" else float(value)
        except ValueError:
            raise ValueError(f"{name}={show_value(value)} must be a {KIND_NAMES[kind]}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={show_value(value)} must be a {KIND_NAMES[kind]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={show_value(value)} must be a finite number")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name}={show_value(value)} must be a whole number")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}={show_value(value)} is too large") from None


KIND_NAMES = {"int": "whole number", "float": "number", "str": "string", "bool": "true or false"}


def check_section(section: str, config, rules) -> None:
    """Make every field of a config section its annotated type, then check `rules(config)`, a list of
    (field, holds, rule): the first that does not hold is a ValueError naming the field, its value and the rule."""
    for f in fields(config):
        setattr(config, f.name, as_type(f"{section}.{f.name}", getattr(config, f.name), f.type))
    for name, holds, rule in rules(config):
        if not holds:
            raise ValueError(f"{section}.{name}={show_value(getattr(config, name))} {rule}")


def within(low: float, value, high: float) -> bool:
    return value is None or low <= value <= high


def one_of(values) -> str:
    """The rule for a field with a list of allowed values: "must be a, b or c"."""
    values = list(values)
    return f"must be {', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else f"must be {values[0]}"


def known_architecture(name: str) -> bool:
    """A deit model, `small_cnn`, or a timm / torchvision architecture."""
    from ..models import MODELS

    if name in MODELS or name == "small_cnn":
        return True
    import timm
    import torchvision

    return timm.is_model(name) or name in torchvision.models.list_models()


def check_policy(aa: str | None, batch_aug: bool) -> None:
    """A timm augmentation policy string (RandAugment, AugMix or AutoAugment), as timm parses it."""
    if aa is None or aa == "none":
        return
    from timm.data import auto_augment

    try:
        if aa.startswith("rand"):
            auto_augment.rand_augment_transform(aa, {"translate_const": 100})
        elif aa.startswith("augmix"):
            auto_augment.augment_and_mix_transform(aa, {"translate_const": 100})
        else:
            auto_augment.auto_augment_transform(aa, {"translate_const": 100})
    except Exception:
        raise ValueError(
            f"aug.aa={show_value(aa)} is not a timm augmentation policy; e.g. rand-m9-mstd0.5-inc1 "
            "(RandAugment), augmix-m5-w4-d2 or original (AutoAugment), or none"
        ) from None
    if batch_aug and not aa.startswith("rand"):
        raise ValueError(f"aug.aa={show_value(aa)}: batch augmentation takes RandAugment policies ('rand-m9-...')")
