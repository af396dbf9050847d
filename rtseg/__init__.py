"""rtseg: real-time semantic segmentation (ENet, ERFNet, ESSNet, WSPD-Net) — train, measure, deploy.

The public API. Each name lives in the layer that owns it (docs/architecture.md); modules are never
shadowed: ``rtseg.engine.trainer`` is the function, its module is :mod:`rtseg.engine.trainer`.
"""

from rtseg._version import __version__
from rtseg.checkpoint import create_model, list_models, load_model, save_model
from rtseg.deploy import Segmenter
from rtseg.engine.trainer import train
from rtseg.eval.loop import evaluate
from rtseg.eval.result import SegResult
from rtseg.models import SegmentationModel, model_info, register_model
from rtseg.nn.grouping import convert_to_deploy, make_gradual
from rtseg.reporting import report

__all__ = [
    "SegResult",
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
