"""Data sets and the DeiT recipe's transforms."""

from .datasets import BUILTINS, DataInfo, build_dataset, canonical_name, dataset_defaults
from .transforms import build_transform

__all__ = ["BUILTINS", "DataInfo", "build_dataset", "build_transform", "canonical_name", "dataset_defaults"]
