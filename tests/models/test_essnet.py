"""ESSNet family and WSPD-Net: released-checkpoint parity, structure, shuffle behaviour, export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from conftest import shared_file

from rtseg.checkpoint import CheckpointError, convert_file, load_model
from rtseg.models import create_model, list_models, model_info
from rtseg.models._essnet_blocks import ConvModule, NonBottleneck1D, UpsamplerBlock, channel_shuffle
from rtseg.models.convert import convert_state_dict, load_foreign_state_dict
from rtseg.models.essnet import CITYSCAPES_CLASSES, ESSNet, PyramidPooling

WEIGHTS = "weights/essnet-official"
FAMILY = sorted(set(list_models("essnet*")) | set(list_models("wspdnet*")))


# ------------------------------------------------------------------------------ released checkpoints
@pytest.fixture(scope="module")
def reference(shared_dir):
    return dict(np.load(shared_file(shared_dir, f"{WEIGHTS}/reference_outputs.npz")))


@pytest.fixture(scope="module")
def released(shared_dir):
    """groups -> (raw state dict, converted model in eval mode)."""
    out = {}
    for g in (2, 4):
        raw = load_foreign_state_dict(shared_file(shared_dir, f"{WEIGHTS}/essnet_dg{g}_cityscapes.pth"))
        conv = convert_state_dict("essnet-official", raw)
        model = create_model(conv.model, **conv.model_kwargs)
        model.load_state_dict(conv.state_dict, strict=True)
        out[g] = (raw, model.eval(), conv)
    return out


def _image(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize("g", [2, 4])
def test_released_logits_small(released, reference, g):
    _, model, conv = released[g]
    assert conv.model == f"essnet_dg{g}s"
    with torch.no_grad():
        out = model(_image(reference["image_small"]))[0].numpy()
    ref = reference[f"logits_small_dg{g}"]
    assert out.shape == ref.shape == (20, 128, 256)
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.parametrize("g", [2, 4])
def test_released_argmax_large(released, reference, g):
    _, model, _ = released[g]
    with torch.no_grad():
        pred = model(_image(reference["image_large"]))[0].argmax(0).numpy()
    agree = (pred == reference[f"argmax_large_dg{g}"]).mean()
    assert agree >= 0.9999, f"argmax agrees on only {agree:.6f} of the pixels"


def test_released_param_count(released):
    for g, expected in ((2, 269_504), (4, 193_728)):
        raw, model, _ = released[g]
        learnable = sum(
            v.numel()
            for k, v in raw.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        assert sum(p.numel() for p in model.parameters()) == learnable == expected
    assert model_info("essnet_dg2s").published["released"]["params"] == 269_504


def test_released_grouped_shapes(released):
    for g in (2, 4):
        _, model, _ = released[g]
        sd = model.state_dict()
        for i in list(range(1, 6)) + list(range(7, 15)):
            c = 64 if i < 6 else 128
            for j in (1, 2):
                assert tuple(sd[f"encoder.layers.{i}.conv1L_{j}.weight"].shape) == (c, c // g, 1, 1)
                assert tuple(sd[f"encoder.layers.{i}.conv3x3_{j}.weight"].shape) == (c, 1, 3, 3)
        for i, c in ((1, 64), (2, 64), (4, 16), (5, 16)):  # the decoder's conv-modules are dense
            assert tuple(sd[f"decoder.layers.{i}.conv1L_1.weight"].shape) == (c, c, 1, 1)
        assert tuple(sd["decoder.layers.0.conv.weight"].shape) == (128, 64, 1, 1)
        assert tuple(sd["decoder.output_conv.weight"].shape) == (16, 20, 2, 2)
        assert "encoder.output_conv.weight" not in sd
        dil = [model.encoder.layers[i].conv3x3_2.dilation[0] for i in range(7, 15)]
        assert dil == [2, 4, 8, 16] * 2
        assert all(model.encoder.layers[i].shuffle for i in range(1, 6))


def test_convert_file_roundtrip(shared_dir, reference, released, tmp_path):
    dst = convert_file(
        "essnet-official",
        shared_file(shared_dir, f"{WEIGHTS}/essnet_dg2_cityscapes.pth"),
        tmp_path / "essnet_dg2s_cityscapes.pt",
    )
    model = load_model(dst)
    meta = model.rtseg_meta
    assert meta["class_names"] == CITYSCAPES_CLASSES + ["void"] and len(meta["class_names"]) == 20
    assert meta["input"]["range"] == [0.0, 1.0]
    x = _image(reference["image_small"])[..., :64, :96]
    with torch.no_grad():
        assert torch.equal(model(x), released[2][1](x))
    with pytest.raises(RuntimeError, match="encoder_classifier=False"):
        model(x, encoder_only=True)


def test_converter_rejects_foreign_dicts():
    with pytest.raises(CheckpointError, match="not an ESSNet"):
        convert_state_dict("essnet-official", {"conv.weight": torch.zeros(1)})
    sd = ESSNet(20, _b_rows(), "ups", groups=2, shuffle=True, encoder_classifier=False).state_dict()
    sd["encoder.layers.7.conv1L_1.weight"] = torch.zeros(128, 32, 1, 1)  # one layer with 4 groups
    with pytest.raises(CheckpointError, match="group count"):
        convert_state_dict("essnet-official", sd)
    sd = ESSNet(20, _b_rows(), "ups", groups=2, shuffle=True, encoder_classifier=False).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected"):
        convert_state_dict("essnet-official", sd)


def _b_rows():
    from rtseg.models.essnet import ENCODERS

    return ENCODERS["b"]


# ------------------------------------------------------------------------------------- shuffle / blocks
def test_channel_shuffle_permutation():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    # shuffling with g then with C/g groups is the identity
    assert torch.equal(channel_shuffle(channel_shuffle(x, 3), 4), x)
    with pytest.raises(ValueError, match="divisible"):
        channel_shuffle(x, 5)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shuffle_lets_groups_talk(shuffle):
    """Without shuffle a grouped module's residual branch is block-diagonal over the groups; with it, not."""
    torch.manual_seed(0)
    m = ConvModule(16, groups=2, shuffle=shuffle).eval()
    x = torch.rand(1, 16, 9, 9)
    x2 = x.clone()
    x2[:, 8:] += torch.rand(1, 8, 9, 9)  # perturb group 1 only
    with torch.no_grad():
        d = (m.residual(x2) - m.residual(x)).abs()
    group0_change = d[:, :8].max().item()
    assert d[:, 8:].max().item() > 1e-3
    if shuffle:
        assert group0_change > 1e-3
    else:
        assert group0_change == 0.0


def test_conv_module_shapes_and_validation():
    m = ConvModule(64, dilation=4, groups=4, shuffle=True)
    assert m.conv1L_1.weight.shape == (64, 16, 1, 1) and m.conv3x3_2.dilation == (4, 4)
    assert m(torch.rand(2, 64, 10, 12)).shape == (2, 64, 10, 12)
    with pytest.raises(ValueError):
        ConvModule(64, groups=3)
    with pytest.raises(ValueError):
        ConvModule(64, groups=1, shuffle=True)
    nb = NonBottleneck1D(8, dilation=2, kernel_size=5)
    assert nb.conv3x1_2.weight.shape == (8, 8, 5, 1) and nb(torch.rand(1, 8, 11, 13)).shape == (1, 8, 11, 13)
    up = UpsamplerBlock(8, 4, kernel_size=1)
    assert up(torch.rand(1, 8, 5, 7)).shape == (1, 4, 10, 14)


def test_pyramid_pooling_levels():
    """§4.2: levels 1/8, 1/4, 1/2 and 1x the feature size, 128 -> 32 each, concatenated to 256 channels."""
    ppm = PyramidPooling(128, 32)
    assert ppm.scales == (8, 4, 2, 1) and ppm.out_channels == 256
    x = torch.rand(1, 128, 7, 9)  # sides not divisible by 8: partial windows are averaged over what they cover
    assert ppm(x).shape == (1, 256, 7, 9)
    # the 1/8 level of a 16 x 24 map is 2 x 3 averages of 8 x 8 cells
    seen = []
    ppm.stages[0][0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.rand(1, 128, 16, 24)
    ppm(x)
    assert seen[0].shape == (1, 128, 2, 3)
    assert torch.allclose(seen[0][0, :, 1, 2], x[0, :, 8:16, 16:24].mean(dim=(-2, -1)), atol=1e-6)
    seen.clear()
    ppm(x[..., :13, :21])  # partial border cells: mean over the pixels inside
    assert torch.allclose(seen[0][0, :, 1, 2], x[0, :, 8:13, 16:21].mean(dim=(-2, -1)), atol=1e-6)


def test_variant_structure():
    kinds = lambda m: [type(layer).__name__ for layer in m.encoder.layers]
    a, b = create_model("essnet_a_dg2"), create_model("essnet_b_dg2")
    assert kinds(b).count("ConvModule") == 13 and kinds(b).count("NonBottleneck1D") == 0
    # Table 3.3: 3 non-bt-1D + 2 conv-modules at 1/4, 4 dilated non-bt-1D + 4 dilated conv-modules at 1/8
    assert kinds(a) == ["DownsamplerBlock"] + ["NonBottleneck1D"] * 3 + ["ConvModule"] * 2 + [
        "DownsamplerBlock"
    ] + ["NonBottleneck1D"] * 4 + ["ConvModule"] * 4
    assert [m.conv1L_1.groups for m in a.encoder.layers if isinstance(m, ConvModule)] == [2] * 6
    assert [type(layer).__name__ for layer in b.decoder.layers].count("NonBottleneck1D") == 4
    final = create_model("essnet_dg4")
    assert final.decoder.layers[0].conv.kernel_size == (1, 1)
    assert final.encoder.layers[1].conv1L_1.groups == 4 and final.decoder.layers[1].conv1L_1.groups == 1
    assert not final.encoder.layers[1].shuffle and create_model("essnet_dg4s").encoder.layers[1].shuffle
    ppm = create_model("essnet_dg2_ppm")
    assert [type(m).__name__ for m in ppm.decoder.layers] == [
        "PyramidPooling", "TransposedUpsample", "NonBottleneck1D", "NonBottleneck1D"
    ]
    assert ppm.decoder.layers[1].conv.in_channels == 256 and ppm.decoder.layers[1].conv.stride == (4, 4)
    t4 = create_model("essnet_d_trans4x")
    assert [type(m).__name__ for m in t4.decoder.layers] == ["TransposedUpsample", "ConvModule", "ConvModule"]
    t8 = create_model("essnet_d_trans8x")
    assert len(t8.decoder.layers) == 0 and t8.decoder.output_conv.kernel_size == (3, 3)
    assert t8.decoder.output_conv.stride == (8, 8)
    ups = create_model("essnet_enc_ups")
    assert [type(m).__name__ for m in ups.decoder.layers] == ["UpsamplerBlock"] + ["NonBottleneck1D"] * 2 + [
        "UpsamplerBlock"
    ] + ["NonBottleneck1D"] * 2
    assert all(m.conv.kernel_size == (1, 1) for m in ups.decoder.layers if isinstance(m, UpsamplerBlock))
    # the released configuration: encoder classifier left out
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(create_model("essnet_dg2s", num_classes=20, encoder_classifier=False)) == 269_504
    assert n(create_model("essnet_dg2s", num_classes=20)) == 269_504 + 128 * 20 + 20


# ---------------------------------------------------------------------------------- every family member
@pytest.mark.parametrize("name", FAMILY)
def test_forward_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    x = torch.rand(1, 3, 37, 70)
    with torch.no_grad():
        assert model(x).shape == (1, 5, 37, 70)
        assert model(x, encoder_only=True).shape == (1, 5, 5, 9)
    assert model_info(name).family == "essnet"


def test_family_registered():
    for m in ("d", "dg2", "dg4", "dg8", "dg2s", "dg4s", "dg8s"):
        for name in (
            f"essnet_{m}",
            f"essnet_a_{m}",
            f"essnet_b_{m}",
            f"essnet_{m}_trans4x",
            f"essnet_{m}_trans8x",
            f"essnet_{m}_nodec",
            f"essnet_{m}_ppm",
        ):
            assert name in FAMILY
    assert "wspdnet" in FAMILY and "essnet_enc_ups" in FAMILY and len(FAMILY) == 51


def test_gradients_reach_every_parameter():
    for name in ("essnet_dg2s_ppm", "wspdnet"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=3).train()
        x = torch.rand(2, 3, 32, 48)
        (model(x).square().mean() + model(x, encoder_only=True).square().mean()).backward()
        missing = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{name}: no gradient for {missing[:5]}"


@pytest.mark.parametrize(
    "name", ["essnet_dg2s", "essnet_a_dg4", "essnet_dg2s_ppm", "essnet_d_nodec", "wspdnet"]
)
def test_onnx_export_matches_torch(name, request):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if name == "essnet_dg2s":
        model = request.getfixturevalue("released")[2][1]  # the real weights (skips without ../shared)
    else:
        torch.manual_seed(0)
        model = create_model(name, num_classes=4).eval()
    x = torch.rand(1, 3, 48, 80)  # 6 x 10 features: the 1/8 and 1/4 pyramid levels have partial cells
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), buf, dynamo=False, opset_version=17, input_names=["image"], output_names=["logits"]
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
