"""Colour label maps, blend overlays and build image / ground truth / prediction grids (numpy + Pillow)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rtseg.data.base import IGNORE_INDEX
from rtseg.utils.io import atomic_open

__all__ = ["add_legend", "colorize", "grid", "overlay", "save_label_png", "save_png"]

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
    col = colorize(labels, palette, ignore_index)
    if image.dtype != np.uint8:
        out = image.astype(np.float32)
        mask = (labels != ignore_index)[..., None]
        out = np.where(mask, (1 - alpha) * out + alpha * col.astype(np.float32), out)
        return out.round().clip(0, 255).astype(np.uint8)
    # uint8: one lookup in a 256 x 256 table of the same float32 blend (bit-identical to it, ~5x faster: a
    # video overlay per frame is on the pipeline's critical path, docs/deploy.md)
    out = _blend_table(float(alpha)).take((image.astype(np.uint16) << 8) | col)
    ignored = np.asarray(labels) == ignore_index
    if ignored.any():
        out[ignored] = image[ignored]
    return out


@functools.lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    """``table[x << 8 | c]`` = ``round((1 - alpha) * x + alpha * c)`` in float32, for uint8 ``x`` and ``c``."""
    x = np.arange(256, dtype=np.float32)
    t = (1 - alpha) * x[:, None] + alpha * x[None, :]
    return t.round().clip(0, 255).astype(np.uint8).ravel()


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


def add_legend(image: np.ndarray, class_names: Sequence[str], palette: np.ndarray,
               classes: Sequence[int] | None = None, pad: int = 4) -> np.ndarray:
    """``image`` with a white band below it: one colour swatch and name per class, wrapped to its width.

    ``classes`` picks the ids shown (e.g. those present in a prediction); default all of ``class_names``.
    Without a legend a reader of an overlay has to know the palette by heart.
    """
    image = np.asarray(image, np.uint8)
    palette = np.asarray(palette, np.uint8)
    ids = [int(c) for c in (range(len(class_names)) if classes is None else classes)
           if 0 <= int(c) < min(len(class_names), len(palette))]
    if not ids:
        return image
    h, w = image.shape[:2]
    sw, line = 10, 14  # swatch side and line height (PIL's default bitmap font is ~11 px tall)
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(c, str(class_names[c]), sw + 4 + int(draw_probe.textlength(str(class_names[c])))) for c in ids]
    rows: list[list[tuple[int, str, int]]] = [[]]
    x = pad
    for e in entries:  # greedy wrap
        if rows[-1] and x + e[2] > w - pad:
            rows.append([])
            x = pad
        rows[-1].append(e)
        x += e[2] + 3 * pad
    band = np.full((len(rows) * line + 2 * pad, w, 3), 255, np.uint8)
    img = Image.fromarray(np.concatenate([image, band], axis=0))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        y = h + pad + r * line
        x = pad
        for c, name, width in row:
            draw.rectangle([x, y + 1, x + sw - 1, y + sw], fill=tuple(int(v) for v in palette[c]), outline=(0, 0, 0))
            draw.text((x + sw + 4, y), name, fill=(0, 0, 0))
            x += width + 3 * pad
    return np.asarray(img)


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
