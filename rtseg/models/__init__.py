"""Model families. Importing this package registers every model (and its converters)."""

from rtseg.models._base import SegmentationModel
from rtseg.models._registry import ModelInfo, create_model, list_models, model_info, register_model

# Families register on import (one line per family file in this folder).
from rtseg.models import enet, erfnet  # noqa: E402,F401
from rtseg.models import essnet, wspdnet  # noqa: E402,F401

__all__ = ["SegmentationModel", "ModelInfo", "create_model", "list_models", "model_info", "register_model"]
