"""Colour label maps, blend overlays and build image / ground truth / prediction grids (numpy + Pillow)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rtseg._io import atomic_open
from rtseg.data.base import IGNORE_INDEX

__all__ = ["colorize", "grid", "overlay", "save_label_png", "save_png"]

VOID_COLOR = (0, 0, 0)


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``H x W`` integer labels -> ``H x W x 3`` uint8 colours (ignored / out-of-palette pixels black)."""
    palette = np.asarray(palette, np.uint8)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette[:256]
    lut[ignore_index % 256] = VOID_COLOR
    lab = np.asarray(labels)
    if lab.min(initial=0) < 0 or lab.max(initial=0) > 255:
        lab = np.where((lab < 0) | (lab > 255), ignore_index, lab)
    return lut[lab.astype(np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Blend the colourised ``labels`` over the ``H x W x 3`` uint8 ``image`` (ignored pixels untouched)."""
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape[:2]} differ in size")
    col = colorize(labels, palette, ignore_index).astype(np.float32)
    out = image.astype(np.float32)
    mask = (labels != ignore_index)[..., None]
    out = np.where(mask, (1 - alpha) * out + alpha * col, out)
    return out.round().clip(0, 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None, pad: int = 4) -> np.ndarray:
    """Tile equally sized ``H x W x 3`` uint8 panels into one image, with optional column titles."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    top = 16 if titles else 0
    out = np.full((top + len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            y, x = top + pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = panel[:h, :w]
    if titles:
        img = Image.fromarray(out)
        draw = ImageDraw.Draw(img)
        for j, t in enumerate(titles):
            draw.text((pad + j * (w + pad) + 2, 2), str(t), fill=(0, 0, 0))
        out = np.asarray(img)
    return out


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 image atomically as PNG."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")
    return path


def save_label_png(labels: np.ndarray, path: str | os.PathLike, palette: np.ndarray) -> Path:
    """Write ``H x W`` labels as an indexed ('P' mode) PNG: raw ids in the pixels, colours in the palette."""
    path = Path(path)
    img = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(palette)] = palette
    img.putpalette(pal.flatten().tolist())
    with atomic_open(path, "wb") as f:
        img.save(f, format="PNG")
    return path
