"""The one dataset interface: uint8 RGB image + int64 label map with a common ignore index."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["IGNORE_INDEX", "SegDataset"]

#: every dataset maps its void/unlabelled ids to this value; losses and metrics ignore it
IGNORE_INDEX = 255


class SegDataset:
    """Base class of rtseg datasets.

    ``ds[i]`` returns ``(image, label)``: ``image`` is ``H x W x 3`` uint8 RGB, ``label`` is ``H x W``
    int64 with values in ``[0, num_classes)`` or :data:`IGNORE_INDEX`. Subclasses set
    ``class_names``, ``palette`` (``num_classes x 3`` uint8) and implement ``__len__``/``load``.
    Transforms (augmentation, tensor conversion) are applied by the caller, not here.
    """

    name: str = "dataset"
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

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        return self.load(index % len(self))
