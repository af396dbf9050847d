"""The one dataset interface: uint8 RGB image + int64 label map with a common ignore index.

Besides :class:`SegDataset` this module holds the machinery every file-backed dataset shares:
strict image/label readers that name the offending file, an id look-up table that refuses ids
outside the class set, and the optional decode cache (``cache="memory"`` / ``"disk"``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.data.io import read_image, read_label
from rtseg.utils.io import atomic_open
from rtseg.utils.progress import tqdm

__all__ = [
    "IGNORE_INDEX",
    "FileSegDataset",
    "SegDataset",
    "apply_lut",
    "cache_dir",
    "check_dataset",
    "default_palette",
    "make_lut",
    "read_image",
    "read_label",
]

#: every dataset maps its void/unlabelled ids to this value; losses and metrics ignore it
IGNORE_INDEX = 255


def cache_dir() -> Path:
    """Where rtseg keeps derived data (class frequencies, decode caches): ``$RTSEG_CACHE`` or ``~/.cache/rtseg``."""
    env = os.environ.get("RTSEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rtseg"


class SegDataset:
    """Base class of rtseg datasets.

    ``ds[i]`` returns ``(image, label)``: ``image`` is ``H x W x 3`` uint8 RGB, ``label`` is ``H x W``
    int64 with values in ``[0, num_classes)`` or :data:`IGNORE_INDEX`. Subclasses set
    ``class_names``, ``palette`` (``num_classes x 3`` uint8) and implement ``__len__``/``load``.
    Transforms (augmentation, tensor conversion) are applied by the caller, not here.
    """

    name: str = "dataset"
    split: str = ""
    class_names: Sequence[str] = ()
    palette: np.ndarray = np.zeros((0, 3), np.uint8)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def cache_key(self) -> str | None:
        """A string that changes whenever the samples could change (``None``: never cache derived data)."""
        return None

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        return self.load(index % len(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes})"


# ----------------------------------------------------------------------------------------------
# strict readers


def make_lut(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """Look-up table raw id -> class id; ids not in ``mapping`` map to -1 (= invalid)."""
    lut = np.full(size, -1, np.int64)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Map raw label ids through ``lut``; an id outside the table or mapping to -1 is a ``ValueError`` naming ``path``."""
    raw = np.asarray(raw)
    if raw.size and (int(raw.min()) < 0 or int(raw.max()) >= len(lut)):
        raise ValueError(f"{path}: label ids {int(raw.min())}..{int(raw.max())} outside the valid range")
    out = lut[raw]
    if (out < 0).any():
        bad = np.unique(raw[out < 0])
        raise ValueError(
            f"{path}: label ids {bad[:10].tolist()} are not in the class set "
            f"(valid: {np.flatnonzero(lut >= 0).tolist()[:40]})"
        )
    return out


def check_pair(image: np.ndarray, label: np.ndarray, image_path: object, label_path: object) -> None:
    """Image and label must have the same height and width; ``ValueError`` naming both files otherwise."""
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from "
            f"image {image_path} size {image.shape[1]}x{image.shape[0]}"
        )


def default_palette(n: int) -> np.ndarray:
    """The PASCAL VOC bit-interleaved colour map (``n x 3`` uint8): distinct, deterministic colours."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0  # +1: skip black, which reads as "void" to most people
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


# ----------------------------------------------------------------------------------------------
# file-backed datasets with an optional decode cache


class FileSegDataset(SegDataset):
    """A dataset of ``(image_path, label_path)`` pairs; subclasses implement :meth:`decode_label`.

    ``cache`` avoids re-decoding PNG/JPEG files every epoch (decoding dominates a 2-core input
    pipeline): ``"memory"`` (or ``True``) keeps decoded arrays in this process — fill it before a
    ``DataLoader`` forks with :meth:`preload` so workers share it copy-on-write; ``"disk"`` writes
    raw ``.npy`` files under :func:`cache_dir` (keyed by file path, size and mtime) that every
    process and later run can memory-map.
    """

    def __init__(self, files: Sequence[tuple[Path, Path]], split: str, cache: bool | str = False) -> None:
        self.files = [(Path(a), Path(b)) for a, b in files]
        self.split = split
        if not self.files:
            raise ValueError(f"{self.name}: split {split!r} is empty (no image/label pairs found)")
        if cache is True:
            cache = "memory"
        if cache not in (False, None, "memory", "disk"):
            raise ValueError(f"cache must be False, True, 'memory' or 'disk', got {cache!r}")
        self.cache = cache or None
        self._mem: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw decoded label file -> ``H x W`` class ids in ``[0, num_classes)`` or ``IGNORE_INDEX``."""
        raise NotImplementedError

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_label(path)

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and validate sample ``index`` from disk (no cache). Label returned as uint8 ids."""
        ip, lp = self.files[index]
        image = read_image(ip)
        label = self.decode_label(self.read_raw_label(lp), lp)
        check_pair(image, label, ip, lp)
        # uint8 keeps the decode cache small (a 360x480 int64 map is 1.4 MB, uint8 is 173 kB)
        return image, label.astype(np.uint8 if self.num_classes < IGNORE_INDEX else np.int32)

    def _disk_paths(self, index: int) -> tuple[Path, Path]:
        ip, lp = self.files[index]
        h = hashlib.sha1()
        for p in (ip, lp):
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|".encode())
        h.update(type(self).__name__.encode())
        d = cache_dir() / "decoded" / self.name / h.hexdigest()[:20]
        return d.with_suffix(".img.npy"), d.with_suffix(".lbl.npy")

    def _cached(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache == "memory":
            hit = self._mem.get(index)
            if hit is None:
                hit = self._mem[index] = self.decode(index)
            return hit
        pi, pl = self._disk_paths(index)
        if pi.is_file() and pl.is_file():
            try:
                return np.load(pi, mmap_mode="r"), np.load(pl, mmap_mode="r")
            except (ValueError, OSError):
                pass  # a damaged cache entry is rebuilt below, never trusted
        image, label = self.decode(index)

        for path, arr in ((pi, image), (pl, label)):
            with atomic_open(path, "wb") as f:
                np.save(f, arr)
        return image, label

    def preload(self, progress: bool = False) -> FileSegDataset:
        """Decode every sample now (into memory or the disk cache); returns ``self``."""
        if self.cache is None:
            self.cache = "memory"
        it = range(len(self))
        if progress:
            it = tqdm(it, desc=f"decoding {self.name}/{self.split}")
        for i in it:
            self._cached(i)
        return self

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None:
            image, label = self.decode(index)
        else:
            image, label = self._cached(index)
            image = np.array(image)  # a private, writable copy: callers may augment in place
        return image, label.astype(np.int64)

    def cache_key(self) -> str:
        h = hashlib.sha1(type(self).__name__.encode())
        for ip, lp in self.files:
            h.update(f"{ip.resolve()}|{lp.resolve()}|{lp.stat().st_size}\n".encode())
        return h.hexdigest()[:16]


def check_dataset(ds: SegDataset, progress: bool = False, max_errors: int = 1000) -> int:
    """Decode every sample of ``ds`` once -- image and label files, their sizes, the label ids -- so that a
    bad file fails before any training or evaluation work, not an epoch in. A cached dataset is filled on the
    way (the same decode). Generated datasets (no files) pass at once. Returns the number of samples checked;
    raises one ``ValueError`` whose line names the first bad file (and how many more there are).
    """
    if not isinstance(ds, FileSegDataset):
        return 0
    it: Any = range(len(ds))
    if progress:
        it = tqdm(it, desc=f"checking {ds.name}/{ds.split}", unit="img", leave=False)
    errors: list[str] = []
    for i in it:
        try:
            if ds.cache is None:
                ds.decode(i)
            else:
                ds._cached(i)
        except (ValueError, OSError) as e:
            errors.append(str(e))
            if len(errors) >= max_errors:
                break
    if errors:
        more = f" (and {len(errors) - 1} more bad sample{'s' if len(errors) > 2 else ''} in {ds.name}/{ds.split})" \
            if len(errors) > 1 else ""
        raise ValueError(f"{errors[0]}{more}")
    return len(ds)
