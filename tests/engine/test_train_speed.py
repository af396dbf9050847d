"""Issue #18 step 1: the space-to-batch dilated depthwise conv (rtseg/nn/space_to_batch.py) is the same conv."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtseg
from rtseg.nn.space_to_batch import (
    SpaceToBatchDepthwise,
    is_dilated_depthwise,
    restore,
    space_to_batch_conv,
    speed_up,
)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(45, 60), (7, 9), (3, 2)])  # divisible or not by the dilation; smaller than it
@pytest.mark.parametrize("dilation", [2, 3, 16])
def test_space_to_batch_equals_dilated_conv_forward_and_backward(dilation, size, channels_last) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, padding=dilation, dilation=dilation, groups=6)
    out = space_to_batch_conv(x, w, b, dilation, 6)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-11)


def test_speed_up_swaps_only_dilated_depthwise_convs_and_restores() -> None:
    model = rtseg.create_model("essnet_dg2s", num_classes=5)
    convs = {n: type(m) for n, m in model.named_modules()}
    sd = copy.deepcopy(model.state_dict())
    n = speed_up(model)
    assert n == 8  # conv3x3_2 of the eight dilated encoder conv-modules (dilations 2, 4, 8, 16, twice)
    swapped = [k for k, m in model.named_modules() if type(m) is SpaceToBatchDepthwise]
    assert len(swapped) == 8 and all(k.endswith("conv3x3_2") for k in swapped)
    assert all(isinstance(m, nn.Conv2d) for m in model.modules() if type(m) is SpaceToBatchDepthwise)
    assert model.state_dict().keys() == sd.keys()
    assert restore(model) == 8
    assert {k: type(m) for k, m in model.named_modules()} == convs
    assert not is_dilated_depthwise(nn.Conv2d(4, 4, 3, padding=1, groups=4))  # not dilated
    assert not is_dilated_depthwise(nn.Conv2d(4, 4, 3, padding=2, dilation=2))  # dense
    assert not is_dilated_depthwise(nn.Conv2d(4, 4, 3, padding=1, dilation=2, groups=4))  # not 'same'
    assert not is_dilated_depthwise(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, stride=2))
    assert is_dilated_depthwise(nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4))


def _module_grads(m: nn.Module, x: torch.Tensor, g: torch.Tensor, amp: bool, channels_last: bool) -> list:
    m = copy.deepcopy(m)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = m(x)
    out.float().backward(g)
    return [p.grad for p in m.parameters()]


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_module_bf16_gradients_with_space_to_batch_match_fp32(channels_last) -> None:
    """A dilated ESSNet conv-module's weight gradients in bf16 (NCHW and NHWC) against fp32 of the original:
    as close as the original's bf16 NCHW gradients are (bf16 rounding; 10 % on the BN-normalised first
    depthwise conv). Without space-to-batch, bf16 + NHWC gets the dilated conv's gradient wrong (10x too
    small or ~1e19, docs/training.md)."""
    from rtseg.models._essnet_blocks import ConvModule

    torch.manual_seed(0)
    ref = ConvModule(32, dropprob=0.0, dilation=4, groups=2, shuffle=True).train()
    fast = copy.deepcopy(ref)
    assert speed_up(fast) == 1
    x, g = torch.randn(2, 32, 24, 30), torch.randn(2, 32, 24, 30)
    g32 = _module_grads(ref, x, g, amp=False, channels_last=False)
    g16 = _module_grads(ref, x, g, amp=True, channels_last=False)
    gfast = _module_grads(fast, x, g, amp=True, channels_last=channels_last)
    names = [k for k, _ in ref.named_parameters()]
    for k, r, base, new in zip(names, g32, g16, gfast):
        e_base, e_new = ((base - r).norm() / r.norm()).item(), ((new - r).norm() / r.norm()).item()
        assert e_new <= 1.5 * e_base + 0.02, f"{k}: bf16 gradient error {e_new:.3g}, original bf16 {e_base:.3g}"


def test_space_to_batch_float64_module_stack_gradients_equal_the_original() -> None:
    """ESSNet's dilated conv-module stack (dilations 2, 4, 8, 16, 2-group shuffle) in float64: the swapped
    stack's output and every parameter gradient are the original's up to rounding."""
    from rtseg.models._essnet_blocks import ConvModule

    torch.manual_seed(0)
    ref = nn.Sequential(*(ConvModule(16, 0.0, d, groups=2, shuffle=True) for d in (2, 4, 8, 16)))
    ref = ref.double().train()
    fast = copy.deepcopy(ref)
    assert speed_up(fast) == 4
    x = torch.randn(2, 16, 11, 15, dtype=torch.float64)
    g = torch.randn(2, 16, 11, 15, dtype=torch.float64)
    outs = []
    for m in (ref, fast):
        out = m(x)
        out.backward(g)
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    for (k, p), q in zip(ref.named_parameters(), fast.parameters()):
        # (a conv bias right before a BN has a gradient of zero up to rounding)
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-11, msg=k)


def test_channels_last_guard_ignores_space_to_batch_convs() -> None:
    from rtseg.engine.trainer import has_dilated_depthwise as _has_dilated_depthwise

    model = rtseg.create_model("essnet_dg2s", num_classes=5)
    assert _has_dilated_depthwise(model)
    speed_up(model)
    assert not _has_dilated_depthwise(model)  # bf16 + NHWC is safe: no dilated depthwise kernel runs


def test_train_with_space_to_batch_keeps_channels_last_and_returns_plain_convs(tmp_path, capsys) -> None:
    r = rtseg.train(
        model="essnet_dg2s",
        dataset="synthetic",
        dataset_kwargs={"size": (40, 56), "length": 8},
        crop=(32, 48),
        batch_size=4,
        workers=0,
        progress=False,
        val_split=None,
        stages="encoder,full",
        epochs=1,
        encoder_epochs=1,
        amp=True,
        channels_last=True,
        ema=0.9,
        device="cpu",
        out=str(tmp_path / "run"),
    )
    assert "channels_last ignored" not in capsys.readouterr().out
    assert all(math.isfinite(h["train_loss"]) for h in r["history"])
    assert not any(type(m) is SpaceToBatchDepthwise for m in r["model"].modules())
    assert r["config"]["space_to_batch"] is True
