"""Building blocks shared by every ESSNet-family model (ESSNet A/B/final, decoder variants, WSPD-Net).

References:
    N. Vallurupalli et al., "Efficient Semantic Segmentation using Gradual Grouping", CVPR Workshops 2018.
    N. Vallurupalli, "On Designing Efficient Deep Neural Networks for Semantic Segmentation", MS thesis,
    IIIT Hyderabad, 2022 (ch. 3: conv-modules D / DGC / DGCS and the ESSNet backbones; ch. 4: decoders, WSPD-Net).
    E. Romera et al., "ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic Segmentation",
    IEEE T-ITS 2018 (downsampler block, non-bottleneck-1D, 3x3 transposed-conv upsampler).

Parameter names (``conv``/``bn``, ``conv3x3_1``/``bn1_1``/``conv1L_1``/..., ``conv3x1_1``/...) follow the
authors' PyTorch code so that the released ESSNet checkpoints (and ERFNet ones, for the non-bt-1D layers)
load key for key. Every BatchNorm uses ``eps=1e-3`` as in that code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvModule", "DownsamplerBlock", "NonBottleneck1D", "UpsamplerBlock", "channel_shuffle"]

BN_EPS = 1e-3


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: ``B x (g*n) x H x W`` -> same shape, channel ``i*n + j`` moves to ``j*g + i``.

    After a convolution with ``groups`` groups, group ``i`` owns channels ``[i*n, (i+1)*n)``; the shuffle
    deals them out round-robin so that the next grouped convolution sees channels from every group.
    """
    if groups == 1:
        return x
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible into {groups} groups")
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DownsamplerBlock(nn.Module):
    """ERFNet/ENet downsampler: ``[3x3 stride-2 conv (out-in filters) || 2x2 max-pool]`` -> BN -> ReLU.

    ``B x in_ch x H x W`` -> ``B x out_ch x H/2 x W/2`` (H, W even).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        if out_ch <= in_ch:
            raise ValueError(
                f"DownsamplerBlock needs out_ch > in_ch (the pool branch keeps in_ch), got {in_ch}->{out_ch}"
            )
        self.conv = nn.Conv2d(in_ch, out_ch - in_ch, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class NonBottleneck1D(nn.Module):
    """ERFNet non-bottleneck-1D residual layer, ``B x C x H x W`` -> same shape.

    ``kx1 -> ReLU -> 1xk -> BN -> ReLU -> kx1 (dil d) -> ReLU -> 1xk (dil d) -> BN -> dropout -> +x -> ReLU``.
    ``kernel_size`` is 3 in ERFNet/ESSNet-A and 5 in WSPD-Net's early layers. Parameter names keep ERFNet's
    ``conv3x1_*``/``conv1x3_*`` whatever the kernel size, so ERFNet weights load into the k=3 layers.
    """

    def __init__(self, ch: int, dropprob: float = 0.0, dilation: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        k, p, d = kernel_size, kernel_size // 2, dilation
        self.conv3x1_1 = nn.Conv2d(ch, ch, (k, 1), padding=(p, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(ch, ch, (1, k), padding=(0, p), bias=True)
        self.bn1 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.conv3x1_2 = nn.Conv2d(ch, ch, (k, 1), padding=(p * d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(ch, ch, (1, k), padding=(0, p * d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv3x1_1(x))
        y = F.relu(self.bn1(self.conv1x3_1(y)))
        y = F.relu(self.conv3x1_2(y))
        y = self.dropout(self.bn2(self.conv1x3_2(y)))
        return F.relu(y + x)


class ConvModule(nn.Module):
    """ESSNet conv-module (thesis ch. 3): two depthwise-separable convs in a residual layer, ``B x C x H x W``.

    ``dw3x3 -> BN -> ReLU -> pw1x1/g -> BN -> ReLU [-> shuffle] -> dw3x3 (dil d) -> BN -> ReLU -> pw1x1/g -> BN
    -> dropout -> +x -> ReLU``.

    ``groups=1`` is the thesis' *D* module, ``groups=g`` its *DGC* (both pointwise convs in ``g`` groups) and
    ``shuffle=True`` its *DGCS*. The shuffle sits right after the first grouped pointwise conv's BN+ReLU and
    the dilation on the second depthwise conv: of all candidate placements only this one reproduces the
    released checkpoints' reference logits (exactly, see docs/models.md), and it agrees with the
    thesis text. A channel permutation commutes with ReLU, so "before/after the ReLU" is the same network.
    """

    def __init__(
        self, ch: int, dropprob: float = 0.0, dilation: int = 1, groups: int = 1, shuffle: bool = False
    ) -> None:
        super().__init__()
        if ch % groups:
            raise ValueError(f"ConvModule: {ch} channels are not divisible into {groups} groups")
        if shuffle and groups == 1:
            raise ValueError("ConvModule: shuffle=True needs groups > 1 (a 1-group shuffle is the identity)")
        self.groups = groups
        self.shuffle = shuffle
        d = dilation
        self.conv3x3_1 = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=True)
        self.bn1_1 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.conv1L_1 = nn.Conv2d(ch, ch, 1, groups=groups, bias=True)
        self.bn2_1 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.conv3x3_2 = nn.Conv2d(ch, ch, 3, padding=d, dilation=d, groups=ch, bias=True)
        self.bn1_2 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.conv1L_2 = nn.Conv2d(ch, ch, 1, groups=groups, bias=True)
        self.bn2_2 = nn.BatchNorm2d(ch, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropprob)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch alone (before ``+x`` and the final ReLU); same shape as ``x``."""
        y = F.relu(self.bn1_1(self.conv3x3_1(x)))
        y = F.relu(self.bn2_1(self.conv1L_1(y)))
        if self.shuffle:
            y = channel_shuffle(y, self.groups)
        y = F.relu(self.bn1_2(self.conv3x3_2(y)))
        return self.dropout(self.bn2_2(self.conv1L_2(y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + x)

    @torch.no_grad()
    def fold_shuffle(self) -> bool:
        """Fold the DGCS channel shuffle into the first pointwise conv (in place; same outputs).

        ``shuffle(relu(bn(conv_g(y))))`` equals ``relu(bn'(conv'(y)))`` where ``conv'`` is the grouped conv
        written as a dense 1x1 conv (zeros off the group blocks) with its output rows permuted, and ``bn'``
        the same permutation of the BatchNorm. No grouped layout can express the permuted rows, hence dense:
        ``g`` x the MACs of that conv, but no ShuffleChannels op and its layout conversions, which cost more
        in OpenVINO int8 (docs/deploy.md). Returns False (and changes nothing) without a shuffle or when
        ``conv1L_1`` is not a plain grouped ``nn.Conv2d`` (e.g. still a gradual-grouping masked conv).
        """
        conv = self.conv1L_1
        if not self.shuffle or type(conv) is not nn.Conv2d or conv.kernel_size != (1, 1):
            return False
        c, g = conv.out_channels, conv.groups
        perm = channel_shuffle(torch.arange(c, dtype=torch.float32).view(1, c, 1, 1), g).view(-1).long()
        w = torch.block_diag(*conv.weight[:, :, 0, 0].split(c // g))  # c x in_channels, zeros off the groups
        dense = nn.Conv2d(conv.in_channels, c, 1, bias=conv.bias is not None).to(conv.weight)
        dense.weight.copy_(w[perm, :, None, None])
        if conv.bias is not None:
            dense.bias.copy_(conv.bias[perm])
        self.conv1L_1 = dense
        bn = self.bn2_1
        if isinstance(bn, nn.BatchNorm2d):
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                if t is not None:
                    t.copy_(t[perm])
        self.shuffle = False
        return True


class UpsamplerBlock(nn.Module):
    """x2 learned upsampling: stride-2 transposed conv -> BN -> ReLU, ``B x in x H x W`` -> ``B x out x 2H x 2W``.

    ``kernel_size=3`` is ERFNet's upsampler (padding 1, output_padding 1); ``kernel_size=1`` is the final
    ESSNet's cheap "UPS" block (padding 0, output_padding 1: each input pixel lands on the top-left of its
    2x2 cell and the other three positions get only the bias -- exactly what the released weights expect).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"UpsamplerBlock kernel_size must be 1 (UPS) or 3 (ERFNet), got {kernel_size}")
        pad = (kernel_size - 1) // 2
        self.conv = nn.ConvTranspose2d(
            in_ch, out_ch, kernel_size, stride=2, padding=pad, output_padding=1, bias=True
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))
