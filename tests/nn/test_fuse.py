"""fold_batchnorm on every registered model: no BatchNorm left, eval outputs equal within 1e-5."""

import pytest
import torch
from torch import nn

from rtseg import create_model, list_models
from rtseg.nn.fuse import ChannelAffine, FoldReport, fold_batchnorm


def _randomise_bn(model: nn.Module) -> None:
    # fresh BatchNorms are identities; random statistics make folding mistakes visible
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _param(name: str):
    # as in test_models: the dg4/dg8/dg2 (unshuffled) variants differ from d / dg2s only in a conv's
    # `groups`, so the fast suite folds one model per distinct structure and -m slow folds them all
    combinatorial = any(t in name for t in ("dg4", "dg8")) or ("dg2" in name and "dg2s" not in name)
    return pytest.param(name, marks=pytest.mark.slow) if combinatorial else name


@pytest.mark.parametrize("name", [_param(n) for n in list_models()])
def test_fold_every_model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    _randomise_bn(model)
    rep = FoldReport()
    folded = fold_batchnorm(model, example=torch.rand(1, 3, 16, 24), report=rep)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original must be left intact"
    assert len(rep.folded) > len(rep.affine)  # most BNs fold into a conv
    x = torch.rand(2, 3, 24, 40)  # another size and batch than the traced example
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() < 1e-5


def test_cat_batchnorm_becomes_affine_and_transposed_conv_folds():
    model = create_model("erfnet", num_classes=3).eval()
    _randomise_bn(model)
    rep = FoldReport()
    folded = fold_batchnorm(model, report=rep)
    # downsampler BN normalises cat(conv, maxpool): no single conv to fold into
    assert "encoder.initial.bn" in rep.affine
    assert isinstance(folded.get_submodule("encoder.initial.bn"), ChannelAffine)
    assert rep.folded["decoder.stage1.0.bn"] == "decoder.stage1.0.conv"  # ConvTranspose2d -> BN


def test_conv_feeding_two_consumers_is_not_folded():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # scaling the conv would change the second use

    net = Net().eval()
    _randomise_bn(net)
    rep = FoldReport()
    out = fold_batchnorm(net, report=rep)
    assert rep.folded == {} and rep.affine == ["bn"]
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(out(x), net(x), atol=1e-5)


# ---- transposed conv -> sub-pixel conv (the deploy form's ConvTranspose2d) ------------------------
@pytest.mark.parametrize(
    "kernel,stride,padding,output_padding",
    [(3, 2, 1, 1), (2, 2, 0, 0), (1, 2, 0, 1), (4, 2, 1, 0), (8, 8, 0, 0), ((3, 1), 2, (1, 0), (1, 1))],
)
def test_subpixel_equals_transposed_conv(kernel, stride, padding, output_padding):
    from rtseg.nn.fuse import SubPixelConv2d

    torch.manual_seed(0)
    m = nn.ConvTranspose2d(5, 7, kernel, stride=stride, padding=padding, output_padding=output_padding)
    assert SubPixelConv2d.supports(m)
    x = torch.randn(2, 5, 9, 11)
    with torch.no_grad():
        ref, out = m(x), SubPixelConv2d.from_transposed(m)(x)
    assert out.shape == ref.shape == (2, 7, 9 * stride, 11 * stride)
    assert (out - ref).abs().max() < 1e-5


def test_subpixel_refuses_what_it_cannot_express():
    from rtseg.nn.fuse import SubPixelConv2d

    assert not SubPixelConv2d.supports(nn.ConvTranspose2d(4, 4, 3, stride=2))  # output 2n+1, not 2n
    assert not SubPixelConv2d.supports(nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2))
    assert not SubPixelConv2d.supports(nn.ConvTranspose2d(4, 4, 2, stride=1))
    assert not SubPixelConv2d.supports(nn.Conv2d(4, 4, 2, stride=2))
    with pytest.raises(ValueError, match="no sub-pixel form"):
        SubPixelConv2d.from_transposed(nn.ConvTranspose2d(4, 4, 3, stride=2))


@pytest.mark.parametrize("name", ["enet", "erfnet", "essnet_dg2s", "essnet_dg2s_trans8x"])
def test_transposed_to_subpixel_on_whole_models(name):
    from rtseg.nn.fuse import SubPixelConv2d, transposed_to_subpixel

    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    sub, names = transposed_to_subpixel(model)
    assert names and not any(isinstance(m, nn.ConvTranspose2d) for m in sub.modules())
    assert sum(isinstance(m, SubPixelConv2d) for m in sub.modules()) == len(names)
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert (sub(x) - model(x)).abs().max() < 1e-4


# ---- ENet's export-form unpooling -------------------------------------------------------------------
def test_mask_unpooling_equals_index_unpooling_with_ties():
    import torch.nn.functional as F

    from rtseg.models.enet import argmax_mask2x2, mask_unpool2x2, max_unpool2x2

    torch.manual_seed(0)
    x = torch.randint(0, 3, (2, 6, 8, 10)).float()  # many ties inside 2x2 windows
    x[..., :4, :4] = 0.0  # whole windows tied
    pooled, idx = F.max_pool2d(x, 2, stride=2, return_indices=True)
    mask = argmax_mask2x2(x)
    assert mask.shape == (2, 6, 4, 4, 5) and torch.equal(mask.sum(2), torch.ones_like(pooled))
    y = torch.randn_like(pooled)
    assert torch.equal(mask_unpool2x2(y, mask), F.max_unpool2d(y, idx, 2, stride=2))
    assert torch.equal(max_unpool2x2(y, idx), F.max_unpool2d(y, idx, 2, stride=2))


def test_enet_export_form_keeps_outputs():
    torch.manual_seed(0)
    model = create_model("enet", num_classes=5).eval()
    x = torch.rand(1, 3, 48, 64)
    x[..., :16, :] = 0.5  # flat region: tied maxima inside the pooling windows
    with torch.no_grad():
        ref = model(x)
        out = model.export_form()(x)
    assert (out - ref).abs().max() < 1e-6


def test_subpixel_waste_free_only_where_no_tap_is_zero():
    """waste_free: kernel = stride (every phase one tap) yes; ESSNet's UPS (kernel 1, stride 2: three phases
    get only the bias) and the 3x3 stride-2 upsampler (phases with 1, 2 or 4 of 4 taps) no."""
    from rtseg.nn.fuse import SubPixelConv2d, transposed_to_subpixel

    assert SubPixelConv2d.waste_free(nn.ConvTranspose2d(16, 11, 2, stride=2))
    assert SubPixelConv2d.waste_free(nn.ConvTranspose2d(8, 4, 4, stride=4))
    assert not SubPixelConv2d.waste_free(nn.ConvTranspose2d(8, 4, 1, stride=2, output_padding=1))
    assert not SubPixelConv2d.waste_free(nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1))
    assert not SubPixelConv2d.waste_free(nn.ConvTranspose2d(4, 4, 3, stride=2))  # not expressible at all
    model = create_model("essnet_dg2s", num_classes=5).eval()
    sub, names = transposed_to_subpixel(model, waste_free=True)
    assert names == ["decoder.output_conv"]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), model(x), rtol=1e-4, atol=1e-5)


def test_phase_max_pool_equals_max_pool_and_replaces_only_image_pools():
    """PhaseMaxPool2d gives MaxPool2d(2, 2)'s numbers (ties included); image_pools_to_phase_max replaces the
    stem pools of the 3-channel image (ESSNet and ERFNet), not the 16-channel downsampler's, nor ENet's 3x3
    stem pool, and the whole model's output is unchanged."""
    from rtseg.nn.fuse import PhaseMaxPool2d, image_pools_to_phase_max

    x = torch.randint(0, 3, (2, 3, 6, 10)).float()  # few values: tied maxima
    assert torch.equal(PhaseMaxPool2d()(x), nn.MaxPool2d(2, 2)(x))
    assert PhaseMaxPool2d.supports(nn.MaxPool2d(2))
    for m in (nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 2, ceil_mode=True), nn.MaxPool2d(2, 2, return_indices=True),
              nn.MaxPool2d(2, 1), nn.AvgPool2d(2)):
        assert not PhaseMaxPool2d.supports(m)
    img = torch.rand(1, 3, 64, 96)
    for name, want in (("essnet_dg2s", ["encoder.initial_block.pool"]), ("erfnet", ["encoder.initial.pool"]),
                       ("enet", [])):
        model = create_model(name, num_classes=5).eval()
        new, names = image_pools_to_phase_max(model, img)
        assert names == want, name
        assert sum(isinstance(m, PhaseMaxPool2d) for m in new.modules()) == len(want)
        assert not any(isinstance(m, PhaseMaxPool2d) for m in model.modules())  # a copy
        with torch.no_grad():
            assert torch.equal(new(img), model(img)), name
