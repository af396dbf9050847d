"""What a user may hand to a predictor, turned into ``H x W x 3`` uint8 RGB arrays.

:func:`as_rgb_arrays` accepts an image path (``str`` / ``PathLike``), a numpy array (``H x W x 3`` RGB,
``H x W x 4`` RGBA whose alpha is dropped, ``H x W`` grey, ``B x H x W x 3`` batch; uint8, or float in
[0, 1]), a PIL image of any mode, or a list / tuple of any of these. ``Segmenter.predict`` and
``Segmenter.__call__`` call it first, so every input kind reaches the runtime in one form, and
:func:`is_single` tells whether the caller gave one image (one result back) or several (a list back).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rtseg.data.base import read_image

__all__ = ["as_rgb_arrays", "is_single"]


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert") and hasattr(x, "mode")


def is_single(x: Any) -> bool:
    """True for one image (a path, a PIL image, an ``H x W [x C]`` array); False for a list or a batch."""
    if isinstance(x, (list, tuple)):
        return False
    if isinstance(x, np.ndarray):
        return x.ndim != 4
    return True


def _array(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an H x W x 3 RGB array, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what}: unsupported array dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: float image has NaN or infinite values")
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what}: float images must be RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             "(pass uint8 for 0-255 data)")
        return (a * 255.0).round().astype(np.uint8)
    lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
    if lo < 0 or hi > 255:
        raise ValueError(f"{what}: integer images must be 0-255, got values in [{lo}, {hi}]")
    return np.ascontiguousarray(a.astype(np.uint8))


def _one(x: Any, what: str) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        return read_image(x)  # FileNotFoundError / ValueError naming the file
    if _is_pil(x):
        return np.asarray(x.convert("RGB"), dtype=np.uint8)
    if isinstance(x, np.ndarray):
        return _array(x, what)
    raise TypeError(f"{what}: expected an image path, a numpy array or a PIL image, got {type(x).__name__}")


def as_rgb_arrays(x: Any) -> list[np.ndarray]:
    """Any supported input (see the module doc) -> a list of ``H x W x 3`` uint8 RGB arrays (one per image)."""
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return [_array(a, f"batch item {i}") for i, a in enumerate(x)]
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("no images given (empty list)")
        return [_one(v, f"item {i}") for i, v in enumerate(x)]
    return [_one(x, "image")]
