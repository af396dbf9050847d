"""WSPD-Net: the "symmetric and parallely dilated network" of the ESSNet thesis, ch. 4.3.

Paper:
    N. Vallurupalli, "On Designing Efficient Deep Neural Networks for Semantic Segmentation", MS thesis,
    IIIT Hyderabad, 2022, §4.3 (Table 4.2 layers and channels, Fig. 4.2 the DWS-Dil block; 0.67 M params).

WSPD-Net is shallower and more symmetric than ESSNet (18 layers against the baseline's 23): ERFNet
downsamplers, 3 non-bottleneck-1D (3-tap) layers at 1/2 resolution, 2 non-bt-1D with 5-tap kernels at 1/4,
3 DWS-Dil blocks at 1/8 (layers 9-11), and ERFNet's decoder with 5-tap non-bt-1D at 1/4 and 3-tap at 1/2.
A DWS-Dil block is an asymmetric (3x1, 1x3) pair followed by four depthwise-separable dilated 3x3 convolutions
(rates 2, 4, 8, 16) side by side in one residual layer. Where Table 4.2 and the text leave room (the "2 x"
beside the layer numbers 9-11, how dense the asymmetric pair is), docs/models.md §6 says which reading rtseg
takes and how the 0.67 M decides it.
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

__all__ = ["WSPDNET_DECODER", "WSPDNET_ENCODER", "DWSDilBlock", "WSPDNet"]


# ----------------------------------------------------------------------------------------------- blocks
class DWSDilBlock(nn.Module):
    """DWS-Dil residual layer (Fig. 4.2), ``B x C x H x W`` -> same shape.

    ``dw3x1 -> ReLU -> dw1x3 -> BN -> ReLU`` (the first set of asymmetric convolutions, as in non-bt-1D but
    depthwise), then for each rate ``r`` in ``dilations`` a depthwise-separable branch
    ``dw3x3 (dilation r) -> BN -> ReLU -> pw1x1 -> BN``; the branches are summed ("four different dilation
    rates used parallely in the same residual layer") -> dropout -> ``+x`` -> ReLU. Every conv has a bias,
    as in the author's code. ``4*C^2 + 66*C`` weights plus BN: 74,496 parameters at C = 128.
    """

    def __init__(self, ch: int, dilations: Sequence[int] = (2, 4, 8, 16), dropprob: float = 0.0) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.conv3x1 = nn.Conv2d(ch, ch, (3, 1), padding=(1, 0), groups=ch, bias=True)
        self.conv1x3 = nn.Conv2d(ch, ch, (1, 3), padding=(0, 1), groups=ch, bias=True)
        self.bn1 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(ch, ch, 3, padding=d, dilation=d, groups=ch, bias=True),
                nn.BatchNorm2d(ch, eps=BN_EPS),
                nn.ReLU(inplace=True),
                nn.Conv2d(ch, ch, 1, bias=True),
                nn.BatchNorm2d(ch, eps=BN_EPS),
            )
            for d in self.dilations
        )
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv3x1(x))
        y = F.relu(self.bn1(self.conv1x3(y)))
        s = self.branches[0](y)
        for branch in self.branches[1:]:
            s = s + branch(y)
        return F.relu(self.dropout(s) + x)


# ------------------------------------------------------------------------------------------------ model
class WSPDNet(ESSNet):
    """ESSNet skeleton with the row kinds ``nb1d5`` (non-bt-1D, 5-tap) and ``dwsdil`` (:class:`DWSDilBlock`).

    Input ``B x 3 x H x W`` RGB in [0, 1]; output ``B x num_classes x H x W``; ``encoder_only=True`` gives
    the 1/8-resolution scores of the encoder classifier.
    """

    decoder_table = None  # set below the variant table: {"wspd": Table 4.2's decoder}

    def make_block(
        self, kind: str, in_ch: int, out_ch: int, dilation: Any, dropprob: float, encoder: bool
    ) -> nn.Module:
        if kind == "nb1d5":
            return NonBottleneck1D(out_ch, dropprob, dilation, kernel_size=5)
        if kind == "dwsdil":
            return DWSDilBlock(out_ch, dilation, dropprob)
        return super().make_block(kind, in_ch, out_ch, dilation, dropprob, encoder)


# ------------------------------------------------------------------------------------------ variant table
#: Table 4.2, layers 2-11, after the initial 3->16 downsampler (layer 1). Dropout: ERFNet's 0.03 below 1/8
#: and 0.3 at 1/8 (the thesis text gives 0.3 for everything; no released WSPD-Net code).
WSPDNET_ENCODER: list[Row] = (
    [("nb1d", 16, 1, 0.03)] * 3  # 2-4: 3 x Non-bt-1D(3K), 16 ch, 512x256
    + [("down", 64, 1, 0.0)]  # 5
    + [("nb1d5", 64, 1, 0.03)] * 2  # 6-7: 2 x Non-bt-1D(5K), 64 ch
    + [("down", 128, 1, 0.0)]  # 8
    + [("dwsdil", 128, (2, 4, 8, 16), 0.3)] * 3  # 9-11: DWS-Dil, 128 ch
)

#: Table 4.2, layers 12-18: ERFNet's decoder ("retaining all of the decoder's layers from the baseline
#: architecture") with 5-tap non-bt-1D at 1/4; the final 2x2 deconvolution is ESSNet's classifier.
WSPDNET_DECODER: list[Row] = [
    ("up3", 64, 1, 0.0),  # 12
    ("nb1d5", 64, 1, 0.0),  # 13-14
    ("nb1d5", 64, 1, 0.0),
    ("up3", 16, 1, 0.0),  # 15
    ("nb1d", 16, 1, 0.0),  # 16-17
    ("nb1d", 16, 1, 0.0),
]

WSPDNet.decoder_table = {"wspd": (WSPDNET_DECODER, 2, None)}


# ------------------------------------------------------------------------------------ registered builders
@register_model(
    "wspdnet",
    family="essnet",
    paper=PAPER,
    default_size=(512, 1024),
    published={
        "params": 0.67e6,
        "miou": 69.72,
        "dataset": "cityscapes-val",
        "size": (512, 1024),
        "fps": 51,
        "fps_device": "Nvidia GTX 1080Ti",
        "source": "ESSNet thesis, §4.3 text (Table 4.2 gives the layers)",
    },
)
def wspdnet(num_classes: int = 19, **kwargs: Any) -> WSPDNet:
    """WSPD-Net (thesis Table 4.2): non-bt-1D 3K at 1/2, 5K at 1/4, 3 DWS-Dil blocks at 1/8, ERFNet-style decoder."""
    return WSPDNet(num_classes, WSPDNET_ENCODER, decoder="wspd", **kwargs)
