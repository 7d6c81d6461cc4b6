"""DeiT networks, their named configurations, and their weights."""

from .factory import create_model
from .fitting import load_weights
from .registry import MODELS, list_models
from .vit import DistilledVisionTransformer, VisionTransformer
from .weights import WeightsError, export_weights, read_checkpoint, save_weights

__all__ = [
    "MODELS",
    "DistilledVisionTransformer",
    "VisionTransformer",
    "WeightsError",
    "create_model",
    "export_weights",
    "list_models",
    "load_weights",
    "read_checkpoint",
    "save_weights",
]
