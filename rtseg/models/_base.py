"""The contract every rtseg model carries (segment-anything style: the model owns its I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationModel"]


class SegmentationModel(nn.Module):
    """Base class: input normalisation as buffers, pad-to-stride and crop-back, encoder-only mode.

    ``forward(x)`` takes ``B x 3 x H x W`` float RGB in [0, 1] of any H and W and returns
    ``B x num_classes x H x W`` logits. ``forward(x, encoder_only=True)`` returns the encoder's
    class scores at 1/``output_stride`` resolution (``ceil(H / s) x ceil(W / s)``), the target of
    stage-one training.

    Subclasses set ``self.encoder`` / ``self.decoder`` and implement :meth:`forward_padded`, which
    only ever sees inputs whose sides are multiples of ``size_divisor``.
    """

    #: inputs are zero-padded (after normalisation) to a multiple of this, then cropped back
    size_divisor: int = 8
    #: resolution ratio of the encoder-only output
    output_stride: int = 8

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        # checked on the CPU: rtseg.load_model first builds a checkpoint's model on the "meta" device
        mean_t = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=torch.float32, device="cpu")
        std_t = torch.tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=torch.float32, device="cpu")
        if mean_t.shape != (3,) or std_t.shape != (3,) or bool((std_t <= 0).any()):
            raise ValueError(f"mean/std must be 3 values with std > 0, got mean={mean} std={std}")
        # Persistent buffers: the normalisation travels with the weights and into exported graphs.
        self.register_buffer("mean", mean_t.view(1, 3, 1, 1))
        self.register_buffer("std", std_t.view(1, 3, 1, 1))

    def forward_padded(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def export_form(self) -> SegmentationModel:
        """Switch (in place) to the operator forms graph runtimes run fastest; outputs stay identical.

        Called by :func:`rtseg.deploy.deploy_model` before export. The default changes nothing; ENet
        replaces its ScatterElements max-unpooling by a one-hot mask (see ``rtseg.models.enet``).
        """
        return self

    def forward(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape B x 3 x H x W, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x = (x - self.mean) / self.std
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.forward_padded(x, encoder_only=encoder_only)
        if encoder_only:
            s = self.output_stride
            return out[..., : -(-h // s), : -(-w // s)]
        if ph or pw:
            out = out[..., :h, :w]
        return out
