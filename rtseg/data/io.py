"""The one place rtseg decodes an image or label file (datasets, eval, train, predict, the Segmenter, serve).

:func:`read_image` returns ``H x W x 3`` uint8 RGB for every PNG/JPEG/BMP/TIFF mode Pillow decodes:
8-bit (L, P, RGB), with alpha (LA, PA, RGBA: the alpha channel is dropped, the stored colours kept),
1-bit, CMYK and YCbCr JPEGs, and 16-bit grayscale (I;16*, or I from a PNG), which is scaled to 8 bits
(``round(v * 255 / 65535)``) instead of being clipped to white. Anything it cannot read faithfully
(32-bit float or signed images, values outside 0..65535) is refused with the file and the mode named.
Every failure is a one-line ``ValueError`` / ``FileNotFoundError`` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["IMAGE_MODES", "LABEL_MODES", "image_to_rgb", "open_image", "read_image", "read_label"]

#: modes converted by Pillow's own (lossless for these) conversion to RGB
_TO_RGB = ("RGB", "L", "P", "PA", "LA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "1")
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N")
#: every mode :func:`read_image` accepts
IMAGE_MODES = (*_TO_RGB, *_SIXTEEN, "I")
#: every mode :func:`read_label` accepts as an id map
LABEL_MODES = ("L", "P", "I", *_SIXTEEN, "1", "LA", "PA")


def open_image(path: str | os.PathLike | BinaryIO, name: str | None = None):
    """Open and fully decode ``path`` with Pillow (first frame of an animation); one-line errors naming it.

    ``path`` may also be a binary file object (an upload in ``rtseg serve``); ``name`` then names it in errors.
    """
    from PIL import Image, UnidentifiedImageError

    if hasattr(path, "read"):
        src: Any = path
        path = Path(name or getattr(path, "name", None) or "<upload>")
    else:
        path = src = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(src)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: image too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, PermissionError):
            raise PermissionError(f"{path}: permission denied") from None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path}: unreadable image file ({e.__class__.__name__}: {msg})") from None
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{path}: image has no pixels ({img.width}x{img.height})")
    return img


def _sixteen_to_8(a: np.ndarray, path: Path, mode: str) -> np.ndarray:
    a = a.astype(np.int64)
    if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
        raise ValueError(f"{path}: image mode {mode!r} with values {int(a.min())}..{int(a.max())}; "
                         "only 8- and 16-bit images are read (convert it to an 8-bit RGB PNG)")
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def read_image(path: str | os.PathLike | BinaryIO, name: str | None = None) -> np.ndarray:
    """Decode an image file (or binary file object) to ``H x W x 3`` uint8 RGB (modes: the module docstring)."""
    img = open_image(path, name)
    path = Path(name or getattr(path, "name", None) or "<upload>") if hasattr(path, "read") else Path(path)
    return image_to_rgb(img, path)


def image_to_rgb(img: Any, path: str | os.PathLike = "<image>") -> np.ndarray:
    """A decoded PIL image -> ``H x W x 3`` uint8 RGB by the module's mode rules (16-bit scaled, not clipped);
    ``ValueError`` naming ``path`` and the mode for modes it cannot read faithfully. ``rtseg serve`` calls this
    after its own header checks, so an upload is converted exactly as a file on disk."""
    path = Path(path)
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in _TO_RGB:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in _SIXTEEN or mode == "I":
        gray = _sixteen_to_8(np.asarray(img), path, mode)
        return np.repeat(gray[..., None], 3, axis=2)
    raise ValueError(f"{path}: image mode {mode!r} is not supported (accepted: {', '.join(IMAGE_MODES)}); "
                     "convert it to an 8-bit RGB PNG")


def read_label(path: str | os.PathLike, allow_color: bool = False) -> np.ndarray:
    """Decode a label PNG to ``H x W`` integer ids (or ``H x W x 3`` uint8 colours if ``allow_color``).

    Palette ("P") images yield their indices, never their colours: that is how index masks are stored by
    most annotation tools. LA/PA labels yield their first band (the alpha is not an id). A colour (RGB)
    label is refused unless ``allow_color``: an id map saved as RGB would otherwise be misread.
    """
    path = Path(path)
    img = open_image(path)
    mode = img.mode
    if mode in ("L", "P", "I", *_SIXTEEN):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img).astype(np.uint8)
    if mode in ("LA", "PA"):
        return np.asarray(img.getchannel(0))
    if allow_color and mode in ("RGB", "RGBA"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    raise ValueError(f"{path}: label image has mode {mode!r}; expected a single-channel id map "
                     f"({', '.join(LABEL_MODES)})")
