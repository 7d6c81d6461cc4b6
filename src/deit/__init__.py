"""deit: train, distill, evaluate and export Data-efficient Image Transformers."""

from .models import create_model, list_models, load_weights, save_weights

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "load_weights", "save_weights"]
