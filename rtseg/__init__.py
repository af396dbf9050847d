"""rtseg: real-time semantic segmentation (ENet, ERFNet, ESSNet, WSPD-Net) — train, measure, deploy."""

from rtseg.checkpoint import load_model, save_model
from rtseg.deploy import Segmenter
from rtseg.evaluate import evaluate  # shadows the module name; `from rtseg.evaluate import ...` works
from rtseg.grouping import convert_to_deploy, make_gradual
from rtseg.models import SegmentationModel, create_model, list_models, model_info, register_model
from rtseg.report import report  # shadows the module name, like evaluate/train
from rtseg.train import (
    train,  # the function shadows the module name; `from rtseg.train import ...` still works
)

__version__ = "0.1.0"

__all__ = [
    "SegmentationModel",
    "Segmenter",
    "__version__",
    "convert_to_deploy",
    "create_model",
    "evaluate",
    "list_models",
    "load_model",
    "make_gradual",
    "model_info",
    "register_model",
    "report",
    "save_model",
    "train",
]
