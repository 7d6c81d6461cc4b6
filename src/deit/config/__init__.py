"""Training configuration: nested dataclasses, YAML presets, command-line overrides.

`configs/*.yaml` -> flags (the official DeiT `main.py` names where the concept exists) -> `TrainConfig`. A YAML file
holds the sections below (`model:`, `data:`, `aug:`, `optim:`, `distill:`, `run:`) with the field names below.
Unknown keys and flags are errors. Every value is checked for its type and range as it is read, from YAML or a
flag alike, before any work starts: a section's `__post_init__` first makes each field its annotated type (a
whole number stays whole, `lr: 1e-3`, which YAML reads as a string, becomes a float, NaN is refused), then checks
the ranges. `TrainConfig.explicit` records which fields the user set, so that a built-in data set's defaults (small
images want gentler augmentation) fill only the rest.
"""

from .files import MAX_YAML_BYTES, MAX_YAML_VALUES, field_docs, load_yaml, merge
from .sections import SECTIONS, AugConfig, DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig
from .train_config import TrainConfig
from .values import check_policy, known_architecture

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_VALUES",
    "SECTIONS",
    "AugConfig",
    "DataConfig",
    "DistillConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "check_policy",
    "field_docs",
    "known_architecture",
    "load_yaml",
    "merge",
]
