"""WSPD-Net: the ESSNet follow-up of thesis ch. 4 with multi-rate depthwise-separable dilated residual layers.

Paper:
    N. Vallurupalli, "On Designing Efficient Deep Neural Networks for Semantic Segmentation", MS thesis,
    IIIT Hyderabad, 2022, ch. 4 (Table 4.2, the DWS-Dil block).

WSPD-Net keeps ESSNet's skeleton (ERFNet downsamplers, final-ESSNet UPS decoder) and changes the encoder:
non-bottleneck-1D layers with 5-tap kernels at 1/4 resolution, and at 1/8 the DWS-Dil block -- an
asymmetric factorized pair followed by four parallel depthwise dilated 3x3 convs (rates 2, 4, 8, 16) whose
sum a pointwise conv mixes, all inside one residual layer. Table 4.2's exact layer counts and the branch
merge are our reading (docs/models.md, section 6); the rows below are the single place to change them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.models._essnet_blocks import BN_EPS, NonBottleneck1D
from rtseg.models._registry import register_model
from rtseg.models.essnet import PAPER, ESSNet, Row

__all__ = ["WSPDNET_ENCODER", "DWSDilBlock", "WSPDNet"]


# ----------------------------------------------------------------------------------------------- blocks
class DWSDilBlock(nn.Module):
    """DWS-Dil residual layer, ``B x C x H x W`` -> same shape.

    ``3x1 -> ReLU -> 1x3 -> BN -> ReLU -> sum_r(dw3x3 dil r -> BN) -> ReLU -> pw1x1 -> BN -> dropout -> +x -> ReLU``.
    The factorized pair gives a dense local context; the parallel depthwise branches see four receptive
    fields at the cost of ``9*C`` weights each, and the single pointwise conv fuses them.
    """

    def __init__(self, ch: int, dilations: Sequence[int] = (2, 4, 8, 16), dropprob: float = 0.0) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.conv3x1 = nn.Conv2d(ch, ch, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3 = nn.Conv2d(ch, ch, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(ch, ch, 3, padding=d, dilation=d, groups=ch, bias=False),
                nn.BatchNorm2d(ch, eps=BN_EPS),
            )
            for d in self.dilations
        )
        self.pw = nn.Conv2d(ch, ch, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv3x1(x))
        y = F.relu(self.bn1(self.conv1x3(y)))
        s = self.branches[0](y)
        for branch in self.branches[1:]:
            s = s + branch(y)
        y = self.dropout(self.bn2(self.pw(F.relu(s))))
        return F.relu(y + x)


# ------------------------------------------------------------------------------------------------ model
class WSPDNet(ESSNet):
    """ESSNet with two more row kinds: ``nb1d5`` (non-bt-1D, 5-tap) and ``dwsdil`` (:class:`DWSDilBlock`).

    Input ``B x 3 x H x W`` RGB in [0, 1]; output ``B x num_classes x H x W``; ``encoder_only=True`` gives
    the 1/8-resolution scores of the encoder classifier.
    """

    def make_block(
        self, kind: str, in_ch: int, out_ch: int, dilation: Any, dropprob: float, encoder: bool
    ) -> nn.Module:
        if kind == "nb1d5":
            return NonBottleneck1D(out_ch, dropprob, dilation, kernel_size=5)
        if kind == "dwsdil":
            return DWSDilBlock(out_ch, dilation, dropprob)
        return super().make_block(kind, in_ch, out_ch, dilation, dropprob, encoder)


# ------------------------------------------------------------------------------------------ variant table
#: Encoder rows after the initial 3->16 downsampler (our reading of thesis Table 4.2).
WSPDNET_ENCODER: list[Row] = (
    [("down", 64, 1, 0.0)]
    + [("nb1d5", 64, 1, 0.03)] * 5
    + [("down", 128, 1, 0.0)]
    + [("dwsdil", 128, (2, 4, 8, 16), 0.3)] * 4
)


# ------------------------------------------------------------------------------------ registered builders
@register_model("wspdnet", family="essnet", paper=PAPER, default_size=(512, 1024))
def wspdnet(num_classes: int = 19, **kwargs: Any) -> WSPDNet:
    """WSPD-Net (thesis Table 4.2): 5-tap non-bt-1D at 1/4, DWS-Dil multi-rate blocks at 1/8, UPS decoder."""
    return WSPDNet(num_classes, WSPDNET_ENCODER, decoder="ups", **kwargs)
