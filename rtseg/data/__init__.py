"""Datasets: CamVid, Cityscapes, SUN RGB-D, generic folders and a synthetic street-scene generator."""

from rtseg.data.base import IGNORE_INDEX, FileSegDataset, SegDataset, cache_dir
from rtseg.data.camvid import CamVid
from rtseg.data.cityscapes import Cityscapes  # cityscapesscripts is imported on use only
from rtseg.data.folder import FolderDataset
from rtseg.data.registry import build_dataset, class_frequencies, list_datasets
from rtseg.data.sunrgbd import SUNRGBD
from rtseg.data.synthetic import SyntheticStreet

__all__ = [
    "IGNORE_INDEX",
    "SUNRGBD",
    "CamVid",
    "Cityscapes",
    "FileSegDataset",
    "FolderDataset",
    "SegDataset",
    "SyntheticStreet",
    "build_dataset",
    "cache_dir",
    "class_frequencies",
    "list_datasets",
]
