"""Training-time reformulations of slow CPU convolutions (issue #18, step 1); same parameters, same math.

On the 2-vCPU EPYC (AVX512-BF16, no AMX, torch 2.13 oneDNN) the weight gradient of a *dilated* depthwise
conv is the slowest op of an ESSNet step, and with bf16 + channels_last it is also wrong (docs/training.md).
:class:`SpaceToBatchDepthwise` computes the same conv as a dilation-1 depthwise conv over the ``d x d``
phase sub-grids of the input (space-to-batch, as TF's ``atrous_conv2d`` does): every output is the same
weighted sum of the same inputs, so the result equals the dilated conv up to float summation order, and
the kernels it calls (dilation 1) are the fast and correct ones in every dtype and memory format.

:func:`speed_up` swaps the ``__class__`` of matching ``nn.Conv2d`` modules in place -- parameters,
``state_dict`` keys, hooks and ``isinstance`` checks are unchanged -- and :func:`restore` swaps them back,
so checkpoints, EMA copies, export and evaluation never see the difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpaceToBatchDepthwise", "is_dilated_depthwise", "restore", "space_to_batch_conv", "speed_up"]


def is_dilated_depthwise(m: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` (exact type), depthwise (one input channel per group), dilated, stride 1,
    zero padding equal to its dilation times half the kernel ('same' output size)."""
    if type(m) is not nn.Conv2d or m.groups == 1 or m.groups != m.in_channels or max(m.dilation) == 1:
        return False
    k, d = m.kernel_size, m.dilation
    return (
        m.stride == (1, 1)
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and all(ki % 2 == 1 for ki in k)
        and tuple(m.padding) == (d[0] * (k[0] // 2), d[1] * (k[1] // 2))
        and d[0] == d[1]
    )


def space_to_batch_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, groups: int
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=dilation*(k//2), dilation=dilation, groups=groups)`` computed as a
    dilation-1 conv on the ``dilation**2`` phase sub-grids of ``x`` (zero-padded to a multiple of the
    dilation, which is what the dilated conv's zero padding sees there). ``B x C x H x W`` -> same shape;
    keeps ``x``'s memory format (channels_last in, channels_last out)."""
    d = int(dilation)
    b, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    hp, wp = -(-h // d) * d, -(-w // d) * d
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    # work on the physical layout so that each rearrangement is one contiguous copy
    t = x.permute(0, 2, 3, 1) if nhwc else x  # B x H x W x C  or  B x C x H x W
    if (hp, wp) != (h, w):
        t = F.pad(t, (0, 0, 0, wp - w, 0, hp - h) if nhwc else (0, wp - w, 0, hp - h))
    if nhwc:
        t = t.reshape(b, hp // d, d, wp // d, d, c).permute(0, 2, 4, 1, 3, 5)  # B d d H' W' C
        t = t.reshape(b * d * d, hp // d, wp // d, c).permute(0, 3, 1, 2)  # logical NCHW, NHWC memory
    else:
        t = t.reshape(b, c, hp // d, d, wp // d, d).permute(0, 3, 5, 1, 2, 4)  # B d d C H' W'
        t = t.reshape(b * d * d, c, hp // d, wp // d)
    y = F.conv2d(t, weight, bias, padding=(kh // 2, kw // 2), groups=groups)
    co = y.shape[1]
    if nhwc:
        y = y.permute(0, 2, 3, 1).reshape(b, d, d, hp // d, wp // d, co).permute(0, 3, 1, 4, 2, 5)
        y = y.reshape(b, hp, wp, co)[:, :h, :w].permute(0, 3, 1, 2)
        return y.contiguous(memory_format=torch.channels_last)
    y = y.reshape(b, d, d, co, hp // d, wp // d).permute(0, 3, 4, 1, 5, 2).reshape(b, co, hp, wp)
    return y[:, :, :h, :w].contiguous()


class SpaceToBatchDepthwise(nn.Conv2d):
    """A dilated depthwise ``nn.Conv2d`` whose forward is :func:`space_to_batch_conv` (training speed-up).

    Never constructed: :func:`speed_up` sets it as the ``__class__`` of an existing conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_batch_conv(x, self.weight, self.bias, self.dilation[0], self.groups)


def speed_up(model: nn.Module) -> int:
    """Switch every dilated depthwise conv of ``model`` to :class:`SpaceToBatchDepthwise`; returns how many."""
    n = 0
    for m in model.modules():
        if is_dilated_depthwise(m):
            m.__class__ = SpaceToBatchDepthwise
            n += 1
    return n


def restore(model: nn.Module) -> int:
    """Undo :func:`speed_up` (plain ``nn.Conv2d`` again); returns how many convs were switched back."""
    n = 0
    for m in model.modules():
        if type(m) is SpaceToBatchDepthwise:
            m.__class__ = nn.Conv2d
            n += 1
    return n
