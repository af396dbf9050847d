"""fold_batchnorm on every registered model: no BatchNorm left, eval outputs equal within 1e-5."""

import pytest
import torch
from torch import nn

from rtseg import create_model, list_models
from rtseg.fuse import ChannelAffine, FoldReport, fold_batchnorm


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
