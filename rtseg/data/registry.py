"""Dataset names -> classes (``build_dataset``) and cached per-class pixel counts (``class_frequencies``)."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.data.base import SegDataset, cache_dir
from rtseg.data.camvid import CamVid
from rtseg.data.cityscapes import Cityscapes
from rtseg.data.folder import FolderDataset
from rtseg.data.sunrgbd import SUNRGBD
from rtseg.data.synthetic import SyntheticStreet
from rtseg.utils.io import atomic_write_text
from rtseg.utils.progress import tqdm

__all__ = ["DATASETS", "build_dataset", "class_frequencies", "list_datasets"]


def _camvid(**kw: Any) -> SegDataset:
    return CamVid(**kw)


def _cityscapes(**kw: Any) -> SegDataset:
    return Cityscapes(**kw)


def _sunrgbd(**kw: Any) -> SegDataset:
    return SUNRGBD(**kw)


def _folder(**kw: Any) -> SegDataset:
    return FolderDataset(**kw)


def _synthetic(**kw: Any) -> SegDataset:
    return SyntheticStreet(**kw)


#: name -> (builder, needs a root folder)
DATASETS: dict[str, tuple[Callable[..., SegDataset], bool]] = {
    "camvid": (_camvid, True),
    "cityscapes": (_cityscapes, True),
    "sunrgbd": (_sunrgbd, True),
    "folder": (_folder, True),
    "synthetic": (_synthetic, False),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return sorted(DATASETS)


def build_dataset(
    name: str, root: str | os.PathLike | None = None, split: str = "train", **kw: Any
) -> SegDataset:
    """Build dataset ``name`` (``camvid``, ``cityscapes``, ``sunrgbd``, ``folder``, ``synthetic``).

    ``root`` defaults to ``$RTSEG_DATA/<name>`` when ``RTSEG_DATA`` is set; datasets that read
    files need one. Extra keywords go to the dataset class (e.g. ``cache=True``, ``size=(H, W)``).
    Unknown names raise ``KeyError`` with a close-match suggestion.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        close = difflib.get_close_matches(name.lower(), list(DATASETS), n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"unknown dataset {name!r}{hint}; choose from {', '.join(list_datasets())}")
    builder, needs_root = DATASETS[key]
    if root is None and needs_root:
        env = os.environ.get("RTSEG_DATA")
        if not env:
            raise ValueError(
                f"dataset {key!r} needs root=<folder> (or set RTSEG_DATA to a folder holding {key}/)"
            )
        root = Path(env) / key
    return builder(root=root, split=split, **kw)


def class_frequencies(ds: SegDataset, progress: bool = False) -> np.ndarray:
    """Pixel count of every class over the whole split: ``int64[num_classes]`` (ignored pixels not counted).

    The counts are cached as JSON in ``cache_dir()/class_freq/{name}-{split}-{key}.json`` where
    ``key`` hashes the file list (``ds.cache_key()``), so a changed split is recounted.
    """
    key = ds.cache_key()
    path = None
    if key is not None:
        path = cache_dir() / "class_freq" / f"{ds.name}-{ds.split or 'all'}-{key}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                counts = np.asarray(data["counts"], np.int64)
                if counts.shape == (ds.num_classes,) and data.get("class_names") == list(ds.class_names):
                    return counts
            except (ValueError, KeyError, TypeError):
                pass  # a damaged cache file is recounted and overwritten
    c = ds.num_classes
    counts = np.zeros(c, np.int64)
    it: Any = range(len(ds))
    if progress:
        it = tqdm(it, desc=f"counting {ds.name}/{ds.split} classes")
    for i in it:
        label = ds[i][1]
        counts += np.bincount(label[label < c].ravel(), minlength=c)[:c]
    if path is not None:
        record = {"dataset": ds.name, "split": ds.split, "key": key, "samples": len(ds),
                  "class_names": list(ds.class_names), "counts": counts.tolist()}  # fmt: skip
        atomic_write_text(path, json.dumps(record, indent=1))
    return counts
