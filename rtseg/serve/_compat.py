"""The rtseg helpers the server borrows from other layers, each behind one function: the one place to repoint
when they move (``rtseg.deploy.predictor`` -> ``rtseg.deploy``, ``rtseg.eval.visualize`` -> ``rtseg.eval``)."""

from __future__ import annotations

import numpy as np

from rtseg.deploy.predictor import palette_for
from rtseg.deploy.segmenter import Segmenter
from rtseg.eval.visualize import overlay


def palette(seg: Segmenter) -> np.ndarray:
    """``C x 3`` uint8 class colours of the segmenter's model (the colours ``rtseg predict`` writes)."""
    return palette_for(seg.model, seg.num_classes)


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """``H x W x 3`` uint8 overlay of ``labels`` on ``image`` (``rtseg predict --overlay``'s blend)."""
    return overlay(image, labels, colours, alpha)
