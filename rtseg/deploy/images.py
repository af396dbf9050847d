"""Image inputs of the deploy layer: read files, validate arrays, load calibration / labelled sets."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.data.base import SegDataset
from rtseg.data.io import read_image  # the one reader of every PNG/JPEG mode (#14), used here too
from rtseg.utils.progress import tqdm

__all__ = ["IMAGE_SUFFIXES", "as_image", "labelled_pairs", "load_images", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

ImageLike = np.ndarray | str | os.PathLike


def as_image(img: ImageLike) -> np.ndarray:
    """A path or an ``H x W x 3`` uint8 array -> the array (validated)."""
    if isinstance(img, (str, os.PathLike)):
        return read_image(img)
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got an array of shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0-255), got dtype {a.dtype}")
    return a


def _image_files(source: str | os.PathLike) -> list[Path]:
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(source), recursive=True))
    if not files:
        raise FileNotFoundError(f"{source}: no images found")
    return files


def load_images(source: Any, limit: int | None = None) -> list[np.ndarray]:
    """``H x W x 3`` uint8 RGB images from a folder, glob pattern, list of paths / arrays or a ``SegDataset``.

    With ``limit``, at most ``limit`` images spread evenly over the source (calibration wants variety).
    """
    def pick(n: int) -> list[int]:
        if limit is None or n <= limit:
            return list(range(n))
        return sorted({int(i) for i in np.linspace(0, n - 1, limit)})

    if isinstance(source, SegDataset):
        return [source[i][0] for i in pick(len(source))]
    if isinstance(source, (str, os.PathLike)):
        files = _image_files(source)
        idx = pick(len(files))
        # a bar in a terminal, a line every few seconds in a log file (rtseg.utils.progress), for long sets only
        it = tqdm(idx, desc="images", unit="img", leave=False) if len(idx) > 8 else idx
        return [read_image(files[i]) for i in it]
    items = list(source)
    if not items:
        raise ValueError("no images given")
    return [as_image(items[i]) for i in pick(len(items))]


def labelled_pairs(source: Any) -> list[tuple[np.ndarray, Any]]:
    """(H x W x 3 uint8 image, H x W label) pairs from a ``SegDataset`` or an iterable of pairs."""
    pairs = [source[i][:2] for i in range(len(source))] if isinstance(source, SegDataset) else list(source)
    if not pairs:
        raise ValueError("int8_control: no labelled images given")
    return [(as_image(im), lab) for im, lab in pairs]
