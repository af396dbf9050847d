"""Your own data: a folder of images, a folder of masks and a class list.

Layout::

    root/images/<stem>.{png,jpg,jpeg,bmp,tif,tiff}
    root/masks/<stem>.png              (same stem as the image)
    root/classes.json  or  root/classes.txt

With a ``split`` other than ``None``/``"all"``, ``root/{split}/images`` and ``root/{split}/masks``
are used when they exist, else the stems listed in ``root/{split}.txt`` (one per line).

Class list, index order = class id:

* ``classes.json``: ``[{"name": "road", "color": [128, 64, 128]}, ...]`` or
  ``{"classes": [...]}``; ``color`` is optional (a default palette fills in).
* ``classes.txt``: one class per line, ``name`` or ``name R G B``; ``#`` starts a comment.

A class named ``void``, ``ignore``, ``unlabeled`` or ``unlabelled`` (any case) is not a class:
its index/colour maps to ``IGNORE_INDEX`` and the remaining classes are numbered in order.
Masks are either index images (mode L/P/I: pixel = class index, 255 = ignore) or colour images
(RGB: pixel = a class colour); ``mask_mode="auto"`` decides per file. A colour or index that is
not in the class list is an error naming the mask file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rtseg.data.base import (
    IGNORE_INDEX,
    FileSegDataset,
    apply_lut,
    default_palette,
    make_lut,
    read_image,
    read_label,
)

__all__ = ["VOID_NAMES", "FolderDataset", "read_class_list"]

VOID_NAMES = ("void", "ignore", "unlabeled", "unlabelled")
_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_class_list(path: str | os.PathLike) -> list[tuple[str, tuple[int, int, int] | None]]:
    """Parse ``classes.json`` / ``classes.txt`` into ``[(name, (r, g, b) or None), ...]`` (file order)."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("classes")
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of classes or {{'classes': [...]}}")
        out = []
        for n, entry in enumerate(data):
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError(f"{path}: class #{n} must be a name or {{'name': ..., 'color': [r, g, b]}}")  # noqa: TRY004  (malformed file content)
            out.append((entry["name"], _color(entry.get("color"), f"{path}: class {entry['name']!r}")))
        return out
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").split()
        if len(fields) not in (1, 4):
            raise ValueError(f"{path}:{n}: expected 'name' or 'name R G B', got {line!r}")
        out.append((fields[0], _color(fields[1:] or None, f"{path}:{n}")))
    return out


def _color(value: object, where: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        rgb = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: colour must be three integers, got {value!r}") from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"{where}: colour must be three integers in 0..255, got {value!r}")
    return rgb  # type: ignore[return-value]


class FolderDataset(FileSegDataset):
    """Generic ``images/`` + ``masks/`` dataset with a class list file.

    Args:
        root: dataset folder (see module docstring for the layout).
        split: ``None``/``"all"`` for ``root/images``; otherwise ``root/{split}/images`` or ``root/{split}.txt``.
        classes: path of the class list (default: ``root/classes.json`` or ``root/classes.txt``).
        mask_mode: ``"auto"``, ``"index"`` or ``"color"``.
        cache: ``False``, ``True``/``"memory"`` or ``"disk"`` (see :class:`FileSegDataset`).
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        classes: str | os.PathLike | None = None,
        mask_mode: str = "auto",
        cache: bool | str = False,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset root folder does not exist")
        if mask_mode not in ("auto", "index", "color"):
            raise ValueError(f"mask_mode must be 'auto', 'index' or 'color', got {mask_mode!r}")
        self.root, self.mask_mode = root, mask_mode
        if classes is None:
            cands = [root / "classes.json", root / "classes.txt"]
            found = [p for p in cands if p.is_file()]
            if not found:
                raise FileNotFoundError(f"{cands[0]}: no class list (classes.json or classes.txt) in {root}")
            classes = found[0]
        classes = Path(classes)
        if not classes.is_file():
            raise FileNotFoundError(f"{classes}: class list file does not exist")
        entries = read_class_list(classes)
        keep = [(n, c) for n, c in entries if n.lower() not in VOID_NAMES]
        if not keep:
            raise ValueError(f"{classes}: no (non-void) classes listed")
        names = [n for n, _ in keep]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"{classes}: duplicate class names {sorted(dup)}")
        self.class_names = tuple(names)
        fill = default_palette(len(keep))
        self.palette = np.array([c if c is not None else fill[i] for i, (_, c) in enumerate(keep)], np.uint8)

        # index masks: file index -> class id (void entries -> ignore); 255 always means ignore
        index_map, cid = {IGNORE_INDEX: IGNORE_INDEX}, 0
        for i, (n, _) in enumerate(entries):
            if n.lower() in VOID_NAMES:
                index_map[i] = IGNORE_INDEX
            else:
                index_map[i] = cid
                cid += 1
        self._lut = make_lut(index_map, 65536)
        # colour masks: packed 0xRRGGBB -> class id
        colors: dict[int, int] = {}
        for i, (n, c) in enumerate(entries):
            if c is None:
                continue
            code = (c[0] << 16) | (c[1] << 8) | c[2]
            target = IGNORE_INDEX if n.lower() in VOID_NAMES else index_map[i]
            if code in colors and colors[code] != target:
                raise ValueError(f"{classes}: colour {c} is given to two classes")
            colors[code] = target
        if any(c is None for _, c in keep):
            colors = {}  # colour masks need every class to have an explicit colour
        self._codes = np.array(sorted(colors), np.int64)
        self._code_ids = np.array([colors[k] for k in sorted(colors)], np.int64)
        self.classes_file = classes

        split_name = split if split not in (None, "all") else "all"
        img_dir, mask_dir, stems = root / "images", root / "masks", None
        if split_name != "all":
            if (root / split_name / "images").is_dir():
                img_dir, mask_dir = root / split_name / "images", root / split_name / "masks"
            elif (root / f"{split_name}.txt").is_file():
                stems = [
                    s.strip() for s in (root / f"{split_name}.txt").read_text().splitlines() if s.strip()
                ]
            else:
                raise FileNotFoundError(
                    f"{root / split_name / 'images'}: split {split_name!r} not found "
                    f"(nor {root / (split_name + '.txt')})"
                )
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: folder is missing")
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in _IMG_EXT}
        if stems is None:
            stems = sorted(images)
        files = []
        for s in stems:
            if s not in images:
                raise FileNotFoundError(f"{img_dir / s}.*: image listed in {split_name}.txt is missing")
            mp = mask_dir / f"{s}.png"
            if not mp.is_file():
                raise FileNotFoundError(f"{mp}: mask of {images[s]} is missing")
            files.append((images[s], mp))
        super().__init__(files, split_name, cache)

    def read_raw_label(self, path: Path) -> np.ndarray:
        if self.mask_mode == "color":
            return read_image(path)  # palette ("P") masks are read as their colours here
        return read_label(path, allow_color=self.mask_mode == "auto")

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim == 2:
            return apply_lut(raw, self._lut, path)
        if not len(self._codes):
            raise ValueError(
                f"{path}: colour mask, but {self.classes_file} does not give every class a colour"
            )
        code = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
        pos = np.searchsorted(self._codes, code).clip(0, len(self._codes) - 1)
        ok = self._codes[pos] == code
        if not ok.all():
            bad = np.unique(code[~ok])[:5]
            shown = [((int(b) >> 16) & 255, (int(b) >> 8) & 255, int(b) & 255) for b in bad]
            raise ValueError(f"{path}: colours {shown} are not in the class list {self.classes_file}")
        return self._code_ids[pos]
