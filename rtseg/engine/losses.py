"""Class-weighted cross-entropy, as trained by ENet, ERFNet and the ESSNet thesis.

Street scenes are dominated by road, sky and building pixels; unweighted cross-entropy lets a
network ignore poles and pedestrians. ENet (Paszke et al. 2016, Sec. 5.1) weights each class by

    w_class = 1 / ln(c + p_class),    c = 1.02

where ``p_class`` is the class's share of all labelled pixels; ``c`` bounds the weight of rare
classes at ``1 / ln(c)`` (about 50 for 1.02, 10.5 for 1.10, the value of ERFNet and the ESSNet
thesis). Median-frequency balancing (Eigen & Fergus 2015, used by SegNet) is offered as an option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WeightedCrossEntropy",
    "class_weights",
    "enet_class_weights",
    "max_enet_weight",
    "median_frequency_weights",
]


def _as_probabilities(freq: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    f = torch.as_tensor(np.asarray(freq, dtype=np.float64))
    if f.dim() != 1 or f.numel() == 0:
        raise ValueError(f"class frequencies must be a non-empty 1-D sequence, got shape {tuple(f.shape)}")
    if bool((f < 0).any()) or not bool(torch.isfinite(f).all()):
        raise ValueError(f"class frequencies must be finite and >= 0, got {f.tolist()}")
    total = f.sum()
    if total <= 0:
        raise ValueError("class frequencies are all zero: the labels contain no valid pixel")
    return f / total  # counts or shares: normalised over labelled pixels either way


def enet_class_weights(freq: Sequence[float] | np.ndarray | torch.Tensor, c: float = 1.02) -> torch.Tensor:
    """ENet weights ``1 / ln(c + p)``: per-class pixel counts or shares (``K``) -> ``K`` float32."""
    if c <= 1.0:
        raise ValueError(f"c must be > 1 so that every weight is finite and positive, got {c}")
    p = _as_probabilities(freq)
    return (1.0 / torch.log(c + p)).float()


def median_frequency_weights(
    freq: Sequence[float] | np.ndarray | torch.Tensor,
    image_freq: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Median-frequency balancing ``median(f) / f_class`` (``K`` -> ``K`` float32).

    Eigen & Fergus define ``f_class`` = pixels of the class / pixels of the images where the class
    appears. Pass ``image_freq`` (per-class share of the pixels of images containing the class)
    for that exact definition; without it ``f_class`` is the global pixel share (a uniform
    rescaling per class only when every class appears in every image; see docs/training.md).
    Classes that never occur get weight 0 (they cannot contribute to the loss anyway).
    """
    p = _as_probabilities(freq)
    if image_freq is not None:
        f = torch.as_tensor(np.asarray(image_freq, dtype=np.float64))
        if f.shape != p.shape:
            raise ValueError(f"image_freq has {f.numel()} classes, freq has {p.numel()}")
    else:
        f = p
    present = f > 0
    med = f[present].median() if bool(present.any()) else torch.tensor(1.0, dtype=torch.float64)
    w = torch.where(present, med / f.clamp(min=1e-300), torch.zeros_like(f))
    return w.float()


def class_weights(
    method: str,
    freq: Sequence[float] | np.ndarray | torch.Tensor | None,
    c: float = 1.02,
    num_classes: int | None = None,
) -> torch.Tensor | None:
    """Weights for ``method`` in ``{'enet', 'median', 'none'}``; ``None`` for 'none' (plain CE)."""
    if method == "none":
        return None
    if freq is None:
        raise ValueError(f"class_weighting={method!r} needs class frequencies")
    if method not in ("enet", "median"):
        raise ValueError(f"class_weighting must be 'enet', 'median' or 'none', got {method!r}")
    w = enet_class_weights(freq, c) if method == "enet" else median_frequency_weights(freq)
    if num_classes is not None and w.numel() != num_classes:
        raise ValueError(f"{w.numel()} class frequencies for a model with {num_classes} classes")
    return w


class WeightedCrossEntropy(nn.Module):
    """Pixel-wise cross-entropy with optional class weights and an ignore index.

    ``forward(logits, target)``: ``B x K x H x W`` logits (any float dtype; computed in float32) and
    ``B x H x W`` int64 target with values in ``[0, K)`` or ``ignore_index`` -> scalar loss, the
    weighted mean over valid pixels (PyTorch's ``reduction='mean'``: sum of ``w[y] * nll`` over the
    sum of ``w[y]``). A batch without any valid pixel gives 0 with a gradient, not NaN.
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.register_buffer("weight", None if weight is None else weight.detach().float().clone())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if (
            logits.dim() != 4
            or target.dim() != 3
            or logits.shape[0] != target.shape[0]
            or logits.shape[2:] != target.shape[1:]
        ):
            raise ValueError(
                f"logits B x K x H x W {tuple(logits.shape)} and target B x H x W "
                f"{tuple(target.shape)} do not match"
            )
        # sum / sum-of-weights instead of reduction='mean': identical value, but a batch with no
        # valid pixel gives 0 instead of NaN, without a host sync to check for it.
        total = F.cross_entropy(
            logits.float(), target, weight=self.weight, ignore_index=self.ignore_index, reduction="sum"
        )
        valid = target != self.ignore_index
        if self.weight is None:
            denom = valid.sum()
        else:
            denom = (self.weight[torch.where(valid, target, 0)] * valid).sum()
        return total / denom.clamp(min=1e-12)

    def extra_repr(self) -> str:
        w = "none" if self.weight is None else "[" + ", ".join(f"{v:.2f}" for v in self.weight.tolist()) + "]"
        return f"weight={w}, ignore_index={self.ignore_index}"


# ENet's bound on the weight of a class that never occurs: 1 / ln(c).
def max_enet_weight(c: float) -> float:
    """Largest weight ENet's formula can give (a class with ``p = 0``)."""
    return 1.0 / math.log(c)
