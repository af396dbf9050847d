"""SUN RGB-D (Song et al., CVPR 2015), the 37-class semantic segmentation benchmark.

Layout: the split-per-folder export used by most RGB-D segmentation code (5285 train /
5050 test frames, the 37-class labels of the SUN RGB-D toolbox ``SUNRGBD2Dseg.mat``)::

    root/image/train/*.jpg      root/label37/train/*.png
    root/image/test/*.jpg       root/label37/test/*.png
    (root/depth/... is not read: rtseg models are RGB-only)

Images and labels are paired by file stem. Label PNGs hold 0 = void and 1..37 for the
classes below, which become ``0..36``; void becomes ``IGNORE_INDEX``. Frame sizes vary
(the dataset mixes four sensors), so batches must be built per size or resized by the caller.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rtseg.data.base import IGNORE_INDEX, FileSegDataset, apply_lut, default_palette, make_lut

__all__ = ["SUNRGBD", "SUNRGBD_CLASSES"]

SUNRGBD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
    "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
)  # fmt: skip

_IMG_EXT = (".jpg", ".jpeg", ".png")


class SUNRGBD(FileSegDataset):
    """SUN RGB-D, 37 classes; raw label 0 is void.

    Args:
        root: folder holding ``image/{train,test}`` and ``label37/{train,test}``.
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted as the test split, as in most papers).
        cache: ``False``, ``True``/``"memory"`` or ``"disk"`` (see :class:`FileSegDataset`).
    """

    name = "sunrgbd"
    class_names = SUNRGBD_CLASSES
    #: SUN RGB-D has no official colour map: the PASCAL VOC map is used (deterministic, distinct)
    palette = default_palette(len(SUNRGBD_CLASSES))
    splits = ("train", "test", "val")

    def __init__(self, root: str | os.PathLike, split: str = "train", cache: bool | str = False) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: SUN RGB-D root folder does not exist")
        if split not in self.splits:
            raise ValueError(f"SUN RGB-D split must be one of {self.splits}, got {split!r}")
        folder = "test" if split == "val" else split
        img_dir, lbl_dir = root / "image" / folder, root / "label37" / folder
        for d in (img_dir, lbl_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: SUN RGB-D folder of split {split!r} is missing")
        files = []
        for ip in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMG_EXT):
            lp = lbl_dir / f"{ip.stem}.png"
            if not lp.is_file():
                raise FileNotFoundError(f"{lp}: label of {ip} is missing")
            files.append((ip, lp))
        self.root = root
        super().__init__(files, split, cache)
        self._lut = make_lut({0: IGNORE_INDEX, **{i + 1: i for i in range(len(SUNRGBD_CLASSES))}}, 65536)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, self._lut, path)
