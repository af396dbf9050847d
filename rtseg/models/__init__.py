"""Model families. Importing this package registers every model (and its converters)."""

# Families register on import (one line per family file in this folder).
from rtseg.models import enet, erfnet, essnet, wspdnet  # noqa: F401
from rtseg.models._base import SegmentationModel
from rtseg.models._registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["ModelInfo", "SegmentationModel", "create_model", "list_models", "model_info", "register_model"]
