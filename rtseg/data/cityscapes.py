"""Cityscapes (Cordts et al., CVPR 2016), fine annotations, 19 training classes.

Layout (as downloaded: ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_instanceIds.png

``labelIds`` (0..33) are mapped to the 19 ``trainId`` classes with the table of the official
``cityscapesscripts.helpers.labels`` (imported, never copied); every id whose trainId is 255 or
-1 becomes ``IGNORE_INDEX``. ``load_instances(i)`` returns the raw ``instanceIds`` map
(``labelId * 1000 + k`` for instance pixels, the plain labelId elsewhere) used by iIoU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rtseg.data.base import IGNORE_INDEX, FileSegDataset, apply_lut, make_lut, read_label

__all__ = ["Cityscapes", "CityscapesMeta", "cityscapes_meta"]


def _labels_module() -> Any:
    try:
        from cityscapesscripts.helpers import labels
    except ImportError as e:
        raise ImportError(
            "Cityscapes support needs the official cityscapesscripts package: pip install rtseg[cityscapes]"
        ) from e
    return labels


@dataclass(frozen=True)
class CityscapesMeta:
    """Everything rtseg derives from ``cityscapesscripts.helpers.labels`` (in trainId space)."""

    class_names: tuple[str, ...]  # 19 trainId names
    palette: np.ndarray  # 19 x 3 uint8
    label_to_train: dict[int, int]  # labelId (0..33) -> trainId or IGNORE_INDEX
    train_to_label: np.ndarray  # 19 trainId -> labelId (for writing official prediction files)
    categories: tuple[str, ...]  # categories with at least one evaluated class, in table order
    class_category: np.ndarray  # 19 -> index into ``categories``
    instance_classes: np.ndarray  # bool[19]: class has instances (iIoU is defined)
    instance_categories: tuple[str, ...]  # categories whose labels all have instances (human, vehicle)
    avg_class_size: np.ndarray  # float64[19]: the official average instance size (NaN if none)


@lru_cache(maxsize=1)
def cityscapes_meta() -> CityscapesMeta:
    """Build :class:`CityscapesMeta` from the official label table (``ImportError`` with a hint if absent)."""
    labels = _labels_module()
    table = [lb for lb in labels.labels if lb.id >= 0]
    train = sorted((lb for lb in table if lb.trainId not in (255, -1)), key=lambda lb: lb.trainId)
    if [lb.trainId for lb in train] != list(range(len(train))):
        raise RuntimeError("cityscapesscripts label table has non-contiguous trainIds")
    cats: list[str] = []
    for lb in train:
        if lb.category not in cats:
            cats.append(lb.category)
    # A category takes part in iIoU when every labelled member has instances (the official rule).
    inst_cats = tuple(
        c for c in cats if all(lb.hasInstances for lb in labels.category2labels[c] if lb.id >= 0)
    )
    from cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling import args as _official

    avg = np.array([_official.avgClassSize.get(lb.name, np.nan) for lb in train], np.float64)
    return CityscapesMeta(
        class_names=tuple(lb.name for lb in train),
        palette=np.array([lb.color for lb in train], np.uint8),
        label_to_train={lb.id: (lb.trainId if lb.trainId not in (255, -1) else IGNORE_INDEX) for lb in table},
        train_to_label=np.array([lb.id for lb in train], np.int64),
        categories=tuple(cats),
        class_category=np.array([cats.index(lb.category) for lb in train], np.int64),
        instance_classes=np.array([lb.hasInstances and not lb.ignoreInEval for lb in train]),
        instance_categories=inst_cats,
        avg_class_size=avg,
    )


class Cityscapes(FileSegDataset):
    """Cityscapes fine annotations as 19 trainId classes (1024 x 2048 frames).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"`` (2975), ``"val"`` (500) or ``"test"`` (1525, labels all void).
        cache: ``False``, ``True``/``"memory"`` or ``"disk"`` (see :class:`FileSegDataset`).
    """

    name = "cityscapes"
    splits = ("train", "val", "test")

    def __init__(self, root: str | os.PathLike, split: str = "train", cache: bool | str = False) -> None:
        meta = cityscapes_meta()
        self.meta = meta
        self.class_names = meta.class_names
        self.palette = meta.palette
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: Cityscapes root folder does not exist")
        if split not in self.splits:
            raise ValueError(f"Cityscapes split must be one of {self.splits}, got {split!r}")
        self.root = root
        img_dir = root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise FileNotFoundError(f"{img_dir}: Cityscapes image folder of split {split!r} is missing")
        files = []
        for ip in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = ip.name[: -len("_leftImg8bit.png")]
            lp = root / "gtFine" / split / ip.parent.name / f"{stem}_gtFine_labelIds.png"
            if not lp.is_file():
                raise FileNotFoundError(f"{lp}: label of {ip} is missing")
            files.append((ip, lp))
        super().__init__(files, split, cache)
        self._lut = make_lut(meta.label_to_train, 256)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, self._lut, path)

    def instance_path(self, index: int) -> Path:
        return Path(str(self.files[index][1]).replace("_gtFine_labelIds.png", "_gtFine_instanceIds.png"))

    def load_instances(self, index: int) -> np.ndarray:
        """``H x W`` int32 ``instanceIds`` of sample ``index`` (``labelId * 1000 + k`` on instances)."""
        index = range(len(self))[index]
        path = self.instance_path(index)
        inst = read_label(path).astype(np.int32)
        lbl_path = self.files[index][1]
        from PIL import Image

        with Image.open(lbl_path) as im:
            w, h = im.size
        if inst.shape != (h, w):
            raise ValueError(
                f"{path}: instance map size {inst.shape[1]}x{inst.shape[0]} differs from {lbl_path}"
            )
        return inst
