"""What a training run is built from (`Pieces`): the config, the process and device, the data and its loaders, the
model, the teacher and the loss. `train._build` makes them; the run, its evaluation and its teacher cache
(`caching.py`) use them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from . import distributed
from .config import TrainConfig
from .data import DataInfo
from .data.sampling import Batch, SeededSampler
from .data.shards.streams import ShardOrder
from .distill import DistillationLoss
from .engine import Views
from .teachers import Teacher


@dataclass
class Pieces:
    """What every run builds from its config before it trains, evaluates or fills a teacher cache."""

    cfg: TrainConfig  # with the data set's defaults applied
    env: distributed.DistEnv
    device: torch.device
    amp_dtype: torch.dtype | None
    train_set: Dataset
    val_set: Dataset
    info: DataInfo
    model: nn.Module
    img_size: int
    sampler: SeededSampler | ShardOrder
    train_loader: Iterable[Batch]
    val_loader: Iterable
    views: Views
    options: dict  # DataLoader settings
    teacher: Teacher | None
    criterion: DistillationLoss
    input_path: str = "loader"  # where the training views are made (`data.loaders.input_path`)
