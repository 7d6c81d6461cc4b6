"""Data sets, the DeiT recipe's transforms, and a run's loaders."""

from .datasets import BUILTINS, DataInfo, build_dataset, canonical_name, dataset_defaults
from .transforms import Recipe, eval_transform, train_transform

__all__ = [
    "BUILTINS",
    "DataInfo",
    "Recipe",
    "build_dataset",
    "canonical_name",
    "dataset_defaults",
    "eval_transform",
    "train_transform",
]
