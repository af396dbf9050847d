"""Datasets: CamVid, Cityscapes, SUN RGB-D, generic folders and a synthetic street-scene generator."""

from rtseg.data.base import IGNORE_INDEX, SegDataset

__all__ = ["IGNORE_INDEX", "SegDataset"]
