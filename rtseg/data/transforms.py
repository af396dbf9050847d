"""Training augmentation and label handling in plain torch (no torchvision), vectorised.

One geometric transform does the whole recipe in a single ``grid_sample``: random scale
(0.5-2), horizontal flip, translation and random crop (padding where the crop leaves the
image). Only the output crop is computed, so a 2x zoom costs no more than a 1x one. Images are
resampled bilinearly, labels with nearest neighbour; pixels from outside the source become
0 in the image and ``ignore_index`` in the label, so padding never teaches a class.

Random parameters come from a ``numpy.random.Generator`` the caller passes in: the training
engine derives it from ``(seed, epoch, sample index)``, which makes augmentation independent of
worker count, rank and restarts (the basis of bit-exact ``--resume``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "AffineParams",
    "EvalTransform",
    "TrainTransform",
    "affine_crop",
    "downsample_label",
    "pad_collate",
]


@dataclass(frozen=True)
class AffineParams:
    """One sample's augmentation: scale factor, flip, crop origin in the scaled image (may be < 0)."""

    scale: float
    flip: bool
    top: int
    left: int
    vflip: bool = False  # upside down: the ESSNet thesis text (§3.4.1) flips vertically too


def _axis_map(
    n_out: int, origin: int, n_src: int, scale: float, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source positions of ``n_out`` output pixels along one axis.

    Returns normalised [-1, 1] coordinates for bilinear ``grid_sample`` (pixel-centre convention,
    as ``F.interpolate(align_corners=False)``) and integer nearest-neighbour indices
    (``nearest-exact``: ``floor((i + 0.5) * n_src / n_scaled)``), ``-1`` outside the source.
    """
    n_scaled = max(1, round(n_src * scale))
    pos = torch.arange(n_out, dtype=torch.int64) + origin  # pixel index in the scaled image
    if flip:
        pos = (n_scaled - 1) - pos
    inside = (pos >= 0) & (pos < n_scaled)
    # Integer arithmetic for the label: no float rounding can move a class boundary.
    idx = torch.div((2 * pos + 1) * n_src, 2 * n_scaled, rounding_mode="floor").clamp_(0, n_src - 1)
    idx = torch.where(inside, idx, torch.full_like(idx, -1))
    src = (pos.double() + 0.5) * (n_src / n_scaled) - 0.5
    return ((2 * src + 1) / n_src - 1).float(), idx


def affine_crop(
    image: torch.Tensor,
    label: torch.Tensor | None,
    params: AffineParams,
    size: tuple[int, int],
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale, flip, translate and crop ``image`` (and ``label``) to ``size`` in one resampling.

    ``image``: ``C x H x W`` (any dtype; uint8 stays uint8, rounded), ``label``: ``H x W`` integer
    or ``None``. Returns ``C x h x w`` and ``h x w`` (same dtypes) for ``size = (h, w)``. Output
    pixel ``(i, j)`` shows pixel ``(top + i, left + j)`` of the image scaled by ``params.scale``
    (then mirrored if ``flip``, upside down if ``vflip``); outside the source: 0 in the image, ``ignore_index``
    in the label.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be C x H x W, got {tuple(image.shape)}")
    _, h_src, w_src = image.shape
    h, w = size
    gy, iy = _axis_map(h, params.top, h_src, params.scale, params.vflip)
    gx, ix = _axis_map(w, params.left, w_src, params.scale, params.flip)
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]  # 1 x h x w x 2
    # 'border' reproduces F.interpolate at the image edges; pixels from outside are zeroed below.
    out = F.grid_sample(
        image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    outside = (iy < 0)[:, None] | (ix < 0)[None, :]  # h x w
    out.masked_fill_(outside, 0.0)
    if image.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    else:
        out = out.to(image.dtype)
    out_label = None
    if label is not None:
        if label.shape != image.shape[1:]:
            raise ValueError(f"label {tuple(label.shape)} and image {tuple(image.shape)} sizes differ")
        out_label = label[iy.clamp(min=0)[:, None], ix.clamp(min=0)[None, :]]
        out_label.masked_fill_(outside, ignore_index)
    return out, out_label


def _to_tensors(image: np.ndarray, label: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3, got shape {image.shape}")
    if (
        not image.flags.writeable
    ):  # decode caches hand out read-only views; torch wants to own writable memory
        image = image.copy()
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    lab = None
    if label is not None:
        if label.shape != image.shape[:2]:
            raise ValueError(f"label {label.shape} does not match image {image.shape[:2]}")
        lab = torch.from_numpy(label.astype(np.int64))  # a writable copy, also of read-only caches
    return img, lab


class TrainTransform:
    """The papers' augmentation: random scale, horizontal flip, translation, random crop.

    ``__call__(image, label, rng)``: ``image`` ``H x W x 3`` uint8 RGB, ``label`` ``H x W`` int,
    ``rng`` a ``numpy.random.Generator``. Returns ``3 x h x w`` uint8 and ``h x w`` int64 tensors
    for ``crop = (h, w)``. The scale factor is uniform in ``scale``; the crop origin is uniform over
    all positions that keep the crop inside the scaled image (or, when the scaled image is
    smaller, all placements of the image inside the crop), then shifted by up to ``translate``
    pixels per axis.
    """

    def __init__(
        self,
        crop: Sequence[int],
        scale: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        translate: int = 2,
        ignore_index: int = 255,
        *,
        vflip: float = 0.0,
    ) -> None:
        self.crop = (int(crop[0]), int(crop[1]))
        self.vflip = float(vflip)
        self.scale = (float(scale[0]), float(scale[1]))
        self.hflip = float(hflip)
        self.translate = int(translate)
        self.ignore_index = int(ignore_index)

    def sample_params(self, height: int, width: int, rng: np.random.Generator) -> AffineParams:
        """Draw one sample's parameters for a source of ``height x width``."""
        s = float(rng.uniform(*self.scale)) if self.scale[0] != self.scale[1] else self.scale[0]
        flip = bool(rng.random() < self.hflip)
        t = self.translate
        origin = []
        for n_src, n_out in ((height, self.crop[0]), (width, self.crop[1])):
            slack = max(1, round(n_src * s)) - n_out
            lo, hi = min(0, slack), max(0, slack)
            o = int(rng.integers(lo, hi + 1))
            if t:
                o += int(rng.integers(-t, t + 1))
            origin.append(o)
        # drawn last and only when enabled, so runs without vertical flips keep their random streams
        vflip = bool(rng.random() < self.vflip) if self.vflip > 0 else False
        return AffineParams(scale=s, flip=flip, top=origin[0], left=origin[1], vflip=vflip)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = _to_tensors(image, label)
        params = self.sample_params(img.shape[1], img.shape[2], rng)
        return affine_crop(img, lab, params, self.crop, self.ignore_index)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop={self.crop}, scale={self.scale}, hflip={self.hflip}, "
            f"translate={self.translate}, vflip={self.vflip})"
        )


class EvalTransform:
    """Validation: no augmentation, just ``H x W x 3`` uint8 -> ``3 x H x W`` uint8 and int64 label."""

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_tensors(image, label)  # type: ignore[return-value]


def downsample_label(
    label: torch.Tensor,
    stride: int = 8,
    mode: str = "nearest",
    ignore_index: int = 255,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Labels for the encoder stage: ``B x H x W`` -> ``B x ceil(H/s) x ceil(W/s)``.

    ``nearest`` takes the centre pixel of every ``s x s`` block (what PIL's NEAREST resize in the
    ERFNet and ENet training code does); ``mode`` takes the most frequent valid class of the block
    (``ignore_index`` only when the block has no valid pixel; ties go to the lower class id).
    Blocks that reach past the border (H or W not a multiple of ``s``) only see real pixels,
    matching the model's encoder-only output size ``ceil(H/s) x ceil(W/s)``.
    """
    if label.dim() != 3:
        raise ValueError(f"label must be B x H x W, got {tuple(label.shape)}")
    b, h, w = label.shape
    ph, pw = (-h) % stride, (-w) % stride
    if mode == "nearest":
        # Centre of each block, clamped into the image for the last, partial block.
        ys = torch.clamp(torch.arange(0, h + ph, stride, device=label.device) + stride // 2, max=h - 1)
        xs = torch.clamp(torch.arange(0, w + pw, stride, device=label.device) + stride // 2, max=w - 1)
        return label[:, ys[:, None], xs[None, :]]
    if mode != "mode":
        raise ValueError(f"encoder_target mode must be 'nearest' or 'mode', got {mode!r}")
    valid = label != ignore_index
    n = int(num_classes if num_classes is not None else (label[valid].max().item() + 1 if valid.any() else 1))
    lab = torch.where(valid, label, torch.full_like(label, n))  # ignore -> extra bin n
    lab = F.pad(lab, (0, pw, 0, ph), value=n)
    hb, wb = (h + ph) // stride, (w + pw) // stride
    onehot = F.one_hot(lab, n + 1)[..., :n]  # B x H' x W' x n (the ignore bin is dropped)
    counts = onehot.view(b, hb, stride, wb, stride, n).sum(dim=(2, 4))  # B x hb x wb x n
    best = counts.argmax(dim=-1)
    return torch.where(counts.amax(dim=-1) > 0, best, torch.full_like(best, ignore_index))


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(3 x H_i x W_i, H_i x W_i)`` pairs into ``B x 3 x H x W`` and ``B x H x W``.

    Samples of different sizes are zero-padded (labels with ``ignore_index``) at the bottom/right
    to the largest size, so padded pixels never count in the loss or the metrics.
    """
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], h, w))
    labels = batch[0][1].new_full((len(batch), h, w), ignore_index)
    for i, (img, lab) in enumerate(batch):
        images[i, :, : img.shape[-2], : img.shape[-1]] = img
        labels[i, : lab.shape[-2], : lab.shape[-1]] = lab
    return images, labels
