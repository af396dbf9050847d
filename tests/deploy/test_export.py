"""rtseg export: ONNX / OpenVINO / TorchScript of the BN-folded model, verified against PyTorch."""

import json

import numpy as np
import pytest
import torch

from rtseg import create_model, save_model
from rtseg.cli import main
from rtseg.deploy import ExportError, export, export_onnx

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def enet():
    torch.manual_seed(0)
    return create_model("enet", num_classes=4).eval()


def test_onnx_opset_folded_metadata(enet, tmp_path):
    import onnx

    res = export(enet, tmp_path / "m.onnx", "onnx", size=(64, 96))
    proto = onnx.load(str(res.path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops  # folded
    # ENet's max-unpooling as a one-hot mask + DepthToSpace (OpenVINO runs ScatterElements ~8x slower)
    assert "ScatterElements" not in ops and "DepthToSpace" in ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["rtseg_model"] == "enet" and meta["input_size"] == "64x96" and meta["num_classes"] == "4"
    (check,) = res.checks
    assert check["max_abs"] < 1e-4 and check["agreement"] == 1.0


def test_onnx_dynamic_argmax_runs_other_sizes(enet, tmp_path):
    import onnxruntime as ort

    res = export(enet, tmp_path / "m.onnx", "onnx", size=(64, 96), dynamic=True, argmax=True)
    assert len(res.checks) == 2 and all(c["agreement"] > 0.999 for c in res.checks)
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 48, 80)
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.dtype == np.uint8 and out.shape == (2, 48, 80)
    with torch.no_grad():
        # >= 99 %: a near-tie inside a max-pool window (rounding differs between batched and single-image
        # kernels, in PyTorch itself by 1e-8) moves an unpooled value, changing a few output pixels
        assert (out == enet(x).argmax(1).numpy()).mean() > 0.99


def test_openvino_runs_enet_unpooling(enet, tmp_path):
    pytest.importorskip("openvino")
    res = export(enet, tmp_path / "m.xml", "openvino", size=(64, 96))
    assert (tmp_path / "m.bin").is_file()
    assert res.checks[0]["max_abs"] < 1e-4 and res.checks[0]["agreement"] == 1.0


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torchscript_grouped_shuffled(tmp_path):
    model = create_model("essnet_dg2s", num_classes=3).eval()
    res = export(model, tmp_path / "m.pt", "torchscript", size=(32, 64), argmax=True)
    assert res.checks[0]["agreement"] == 1.0
    loaded = torch.jit.load(res.path)
    assert loaded(torch.rand(1, 3, 32, 64)).dtype == torch.uint8


def test_refusals(enet, tmp_path):
    with pytest.raises(ExportError, match="opset 13"):
        export_onnx(enet, tmp_path / "m.onnx", size=(64, 96), opset=13)
    with pytest.raises(ExportError, match="divisible by 8"):
        export(enet, tmp_path / "m.onnx", size=(60, 96), dynamic=True)
    with pytest.raises(ValueError, match="unknown export format"):
        export(enet, tmp_path / "m.x", format="tflite")


def test_cli_export(enet, tmp_path, capsys):
    ckpt = save_model(enet, tmp_path / "enet.pt")
    out = tmp_path / "e.onnx"
    assert main(["export", str(out), "--weights", str(ckpt), "--size", "64x96", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "onnx" and doc["checks"][0]["agreement"] == 1.0 and out.is_file()
    assert main(["export", str(out), "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["essnet_dg2s", "essnet_dg4s"])
def test_shuffle_folded_into_dense_pointwise(name, tmp_path):
    """Deploy form: each DGCS shuffle becomes a row permutation of a dense 1x1 conv, outputs unchanged."""
    import copy

    from rtseg.deploy import deploy_model
    from rtseg.models._essnet_blocks import ConvModule

    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    _randomise_bn(model)
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        ref = model(x)
        unfolded_bn = copy.deepcopy(model).export_form()  # BatchNorm still there: permuted with the rows
        got = unfolded_bn(x)
        deployed = deploy_model(model)(x)
    mods = [m for m in unfolded_bn.modules() if isinstance(m, ConvModule)]
    assert mods and not any(m.shuffle for m in mods)
    assert all(m.conv1L_1.groups == 1 for m in mods)
    assert any(m.shuffle for m in model.modules() if isinstance(m, ConvModule))  # the original is untouched
    assert torch.allclose(got, ref, atol=1e-5) and torch.allclose(deployed, ref, atol=1e-4)
    res = export(model, tmp_path / "m.onnx", "onnx", size=(32, 64))
    assert res.checks[0]["max_abs"] < 1e-4 and res.checks[0]["agreement"] == 1.0


def test_shuffle_fold_leaves_masked_and_plain_modules():
    from rtseg import make_gradual
    from rtseg.models._essnet_blocks import ConvModule

    model = make_gradual(create_model("essnet_d", num_classes=3), groups=2, shuffle=True)
    x = torch.rand(1, 3, 32, 64)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(model.export_form()(x), ref)  # masked convs are not folded (deploy converts them first)
    assert any(m.shuffle for m in model.modules() if isinstance(m, ConvModule))
    plain = ConvModule(8, groups=2, shuffle=False)
    assert plain.fold_shuffle() is False


def test_argmax_forms_agree_with_ties():
    """Every in-graph argmax form returns torch's argmax: the first maximal class, ties included."""
    from rtseg.deploy.exporter import ArgmaxHead

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2, 6, 9, 11), generator=g).float()  # few distinct values: many ties
    want = y.argmax(1).to(torch.uint8)
    for form in ("argmax", "max_equal", "running_max"):
        got = ArgmaxHead(torch.nn.Identity(), form)(y)
        assert got.dtype == torch.uint8 and torch.equal(got, want), form
    with pytest.raises(ExportError, match="argmax form"):
        ArgmaxHead(torch.nn.Identity(), "topk")


def test_argmax_on_subpixel_phases_equals_argmax_of_shuffled_logits(tmp_path):
    """A model ending in a SubPixelConv2d gets its argmax on the conv's phase channels and only the uint8
    labels shuffled: torch's labels for every form, ties included; with an op after that conv (or no example)
    the head takes the argmax on the logits; the ONNX graph interleaves uint8 (DepthToSpace after the argmax),
    and ONNX Runtime and OpenVINO return the same labels."""
    from rtseg.deploy.exporter import ArgmaxHead, final_subpixel
    from rtseg.nn.fuse import SubPixelConv2d

    sub = SubPixelConv2d.from_transposed(torch.nn.ConvTranspose2d(4, 5, 2, stride=2))
    with torch.no_grad():  # few distinct logits: many ties between classes
        sub.conv.weight.copy_(torch.randint(-1, 2, sub.conv.weight.shape).float())
        sub.conv.bias.zero_()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), sub).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randint(0, 2, model[0].weight.shape).float())
    x = torch.randint(0, 3, (2, 3, 6, 8)).float()
    with torch.no_grad():
        want = model(x).argmax(1).to(torch.uint8)
    assert final_subpixel(model, x) == "1"
    for form in ("argmax", "max_equal", "running_max"):
        head = ArgmaxHead(model, form, example=x)
        assert head.phases_of == "1"
        with torch.no_grad():
            got = head(x)
        assert got.dtype == torch.uint8 and torch.equal(got, want), form
        assert not sub.emit_phases  # the switch is only on while the head runs
    after = torch.nn.Sequential(model, torch.nn.ReLU()).eval()
    assert final_subpixel(after, x) is None and ArgmaxHead(after, example=x).phases_of is None
    assert ArgmaxHead(model).phases_of is None

    onnx = pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    torch.onnx.export(ArgmaxHead(model, "running_max", example=x[:1]), (x[:1],), str(path), opset_version=17,
                      dynamo=False, input_names=["image"], output_names=["labels"])
    nodes = onnx.load(str(path)).graph.node
    d2s = [i for i, n in enumerate(nodes) if n.op_type == "DepthToSpace"]
    assert len(d2s) == 1 and any(n.op_type == "Where" for n in nodes[: d2s[0]])  # the argmax runs before it
    ort = pytest.importorskip("onnxruntime")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x[:1].numpy()})[0]
    np.testing.assert_array_equal(got, want[:1].numpy())
    ov = pytest.importorskip("openvino")
    got = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x[:1].numpy())[0]
    np.testing.assert_array_equal(got, want[:1].numpy())


def test_openvino_argmax_export_is_running_max(tmp_path):
    ov = pytest.importorskip("openvino")
    model = create_model("essnet_dg2s", num_classes=5).eval()
    res = export(model, tmp_path / "m.xml", "openvino", size=(32, 64), argmax=True)
    assert res.checks[0]["agreement"] == 1.0
    ops = {op.get_type_name() for op in ov.Core().read_model(str(res.path)).get_ops()}
    assert "TopK" not in ops and "ReduceMax" not in ops and {"Maximum", "Greater", "Select"} <= ops
