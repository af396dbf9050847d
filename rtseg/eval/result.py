"""One image's segmentation as an object: labels, optional logits/scores, overlay, legend, shares, save.

:class:`SegResult` is what ``Segmenter(...)(image)`` returns (the deploy side builds it); it lives here,
beside the visualisation it uses, so that evaluation, the demo and the report can build one too::

    res = SegResult(labels, class_names, palette, image=rgb)
    res.shares()            # {'road': 0.41, 'sky': 0.22, ...} fractions of the labelled pixels
    res.overlay(0.5)        # H x W x 3 uint8 blend (legend=True adds the class legend below it)
    res.save("out.png")     # atomic; overlay with legend when the image is known, else an indexed PNG
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.data.base import IGNORE_INDEX
from rtseg.eval.visualize import add_legend, colorize, overlay, save_label_png, save_png
from rtseg.utils.io import atomic_open

__all__ = ["SegResult"]

_KINDS = ("overlay", "labels", "color")


class SegResult:
    """The segmentation of one image.

    Args:
        labels: ``H x W`` integer class ids (``ignore_index`` for none).
        class_names: one name per class id.
        palette: ``C x 3`` uint8 colours, one per class id.
        image: the ``H x W x 3`` uint8 RGB input, when kept (needed by :meth:`overlay`).
        logits: ``C x H x W`` float class scores before softmax, when requested (:attr:`scores` needs them).
    """

    def __init__(self, labels: np.ndarray, class_names: Sequence[str], palette: np.ndarray,
                 image: np.ndarray | None = None, logits: np.ndarray | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be H x W, got shape {labels.shape}")
        self.labels = labels
        self.class_names = [str(c) for c in class_names]
        self.palette = np.asarray(palette, np.uint8)
        if len(self.palette) < len(self.class_names):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.class_names)} classes")
        if image is not None:
            image = np.asarray(image)
            if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {image.shape} does not match labels {labels.shape} (need H x W x 3)")
        if logits is not None:
            logits = np.asarray(logits)
            if logits.shape[1:] != labels.shape or logits.shape[0] != len(self.class_names):
                raise ValueError(f"logits {logits.shape} do not match {len(self.class_names)} classes x "
                                 f"{labels.shape}")
        self.image, self.logits, self.ignore_index = image, logits, int(ignore_index)

    def __repr__(self) -> str:
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(self.shares(sort=True).items())[:3])
        return f"SegResult({self.labels.shape[0]}x{self.labels.shape[1]}, {top})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def scores(self) -> np.ndarray:
        """``C x H x W`` float32 softmax probabilities (needs the logits: ask the Segmenter for them)."""
        if self.logits is None:
            raise ValueError("no logits were kept for this result; request them (e.g. "
                             "Segmenter.predict(x, logits=True)) to get class scores")
        z = self.logits.astype(np.float32, copy=False)
        e = np.exp(z - z.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)

    @property
    def confidence(self) -> np.ndarray:
        """``H x W`` float32 probability of the predicted class (needs the logits)."""
        return self.scores.max(axis=0)

    def shares(self, percent: bool = False, sort: bool = False) -> dict[str, float]:
        """Share of the labelled (non-ignored) pixels per class name: fractions, or percent with ``percent``."""
        valid = self.labels[self.labels != self.ignore_index]
        counts = np.bincount(valid.ravel().astype(np.int64), minlength=self.num_classes)[: self.num_classes]
        total = max(int(counts.sum()), 1)
        scale = 100.0 if percent else 1.0
        out = {name: scale * int(c) / total for name, c in zip(self.class_names, counts)}
        return dict(sorted(out.items(), key=lambda kv: -kv[1])) if sort else out

    def present(self) -> list[int]:
        """Class ids that occur in the labels, most frequent first."""
        ids = self.labels[self.labels != self.ignore_index].ravel().astype(np.int64)
        counts = np.bincount(ids, minlength=self.num_classes)[: self.num_classes]
        return [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]

    def color(self, legend: bool = False) -> np.ndarray:
        """``H x W x 3`` uint8 colour map of the labels (``legend`` adds a class legend band below)."""
        out = colorize(self.labels, self.palette, self.ignore_index)
        return add_legend(out, self.class_names, self.palette, self.present()) if legend else out

    def overlay(self, alpha: float = 0.5, legend: bool = False) -> np.ndarray:
        """The colour map blended over the image (``alpha`` = colour weight, 0..1); needs the image."""
        if self.image is None:
            raise ValueError("this result has no image to overlay; pass image=... or use color()")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        out = overlay(np.asarray(self.image, np.uint8), self.labels, self.palette, float(alpha), self.ignore_index)
        return add_legend(out, self.class_names, self.palette, self.present()) if legend else out

    def save(self, path: str | os.PathLike, kind: str | None = None, alpha: float = 0.5,
             legend: bool = True) -> Path:
        """Write the result atomically and return the path.

        ``kind``: ``"overlay"`` (PNG/JPEG blend with a class legend; the default when the image is known),
        ``"labels"`` (indexed PNG: the raw class ids in the pixels, the palette as its colours; the default
        otherwise) or ``"color"`` (RGB colour map). A ``.npy`` path saves the raw ``H x W`` labels.
        """
        path = Path(path)
        if path.suffix.lower() == ".npy":
            with atomic_open(path, "wb") as f:
                np.save(f, self.labels)
            return path
        kind = kind or ("overlay" if self.image is not None else "labels")
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        if kind == "labels":
            if path.suffix.lower() != ".png":
                raise ValueError(f"{path}: labels are saved as an indexed .png (or raw .npy)")
            return save_label_png(self.labels, path, self.palette)
        arr = self.overlay(alpha, legend) if kind == "overlay" else self.color(legend)
        if path.suffix.lower() == ".png":
            return save_png(arr, path)
        return _save_pil(arr, path)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data summary (JSON): size and per-class pixel shares as fractions (``shares_fraction``)."""
        return {"height": int(self.labels.shape[0]), "width": int(self.labels.shape[1]),
                "shares_fraction": self.shares()}


def _save_pil(arr: np.ndarray, path: Path) -> Path:
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image format {path.suffix!r} (use .png, .jpg, ... or .npy)")
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(arr)).save(f, format=fmt)
    return path
