"""ENet and ERFNet equal their reference implementations (golden outputs in ../shared/parity).

The pairs were produced by davidtvs/PyTorch-ENet and Eromera/erfnet_pytorch from seeded random
weights (eval mode, input = pixel / 255). A port that converts those weights and reproduces the
logits is architecturally identical to the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rtseg
from rtseg.checkpoint import CheckpointError, convert_file
from rtseg.models.convert import convert_state_dict, load_foreign_state_dict
from rtseg.models.enet import max_unpool2x2
from tests.conftest import shared_file

TOL = 1e-4

CASES = {
    # source -> (parity file stem, rtseg model)
    "enet-davidtvs": ("enet_davidtvs", "enet"),
    "erfnet-eromera": ("erfnet_eromera", "erfnet"),
}


def _golden(shared, stem):
    io = np.load(shared_file(shared, f"parity/{stem}_io.npz"))
    x = torch.from_numpy(io["image"]).permute(2, 0, 1)[None].float() / 255.0
    return x, io["logits"]


def _max_err(model, x, ref) -> float:
    with torch.no_grad():
        out = model(x)[0].numpy()
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max())


@pytest.mark.parametrize("source", sorted(CASES))
def test_converted_weights_reproduce_reference_logits(source, shared_dir, tmp_path):
    stem, name = CASES[source]
    src = shared_file(shared_dir, f"parity/{stem}_state_dict.pth")
    x, ref = _golden(shared_dir, stem)
    path = convert_file(source, src, tmp_path / "x.pt")
    model = rtseg.load_model(path)
    assert model.rtseg_name == name and model.num_classes == ref.shape[0] == 12
    assert model.rtseg_meta["converted_from"] == {"source": source, "file": src.name}
    err = _max_err(model, x, ref)
    print(f"{source}: max abs error {err:.3g}")
    assert err <= TOL, f"{source}: max abs error {err:.3g} > {TOL}"


@pytest.mark.parametrize("source", sorted(CASES))
def test_converted_parameter_count_equals_reference(source, shared_dir):
    stem, _ = CASES[source]
    sd = load_foreign_state_dict(shared_file(shared_dir, f"parity/{stem}_state_dict.pth"))
    conv = convert_state_dict(source, sd)
    model = rtseg.create_model(conv.model, **conv.model_kwargs)
    ref_params = sum(
        v.numel()
        for k, v in sd.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert sum(p.numel() for p in model.parameters()) == ref_params


def test_cli_convert_path(shared_dir, tmp_path, capsys):
    from rtseg.cli import main

    src = shared_file(shared_dir, "parity/enet_davidtvs_state_dict.pth")
    out = tmp_path / "enet.pt"
    assert main(["convert", "--source", "enet-davidtvs", str(src), str(out), "--num-classes", "12"]) == 0
    x, ref = _golden(shared_dir, "enet_davidtvs")
    assert _max_err(rtseg.load_model(out), x, ref) <= TOL
    # a wrong class count is a user error: exit status 2, one line naming the problem
    bad = tmp_path / "bad.pt"
    assert main(["convert", "--source", "enet-davidtvs", str(src), str(bad), "--num-classes", "19"]) == 2
    assert "does not match the weights' 12" in capsys.readouterr().err
    assert not bad.exists()


def test_converters_refuse_wrong_input(shared_dir):
    enet_sd = load_foreign_state_dict(shared_file(shared_dir, "parity/enet_davidtvs_state_dict.pth"))
    erf_sd = load_foreign_state_dict(shared_file(shared_dir, "parity/erfnet_eromera_state_dict.pth"))
    with pytest.raises(CheckpointError, match="--num-classes 19 does not match the weights' 12"):
        convert_state_dict("enet-davidtvs", enet_sd, num_classes=19)
    with pytest.raises(CheckpointError, match="not a davidtvs ENet"):
        convert_state_dict("enet-davidtvs", erf_sd)
    with pytest.raises(CheckpointError, match="not an Eromera ERFNet"):
        convert_state_dict("erfnet-eromera", enet_sd)
    broken = dict(erf_sd)
    broken["encoder.layers.99.conv3x1_1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="no rtseg counterpart"):
        convert_state_dict("erfnet-eromera", broken)
    del broken["encoder.layers.99.conv3x1_1.weight"], broken["encoder.layers.3.bn1.weight"]
    with pytest.raises(CheckpointError, match="missing"):
        convert_state_dict("erfnet-eromera", broken)
    # prefixed (DataParallel) state dicts convert too
    conv = convert_state_dict("erfnet-eromera", {"module." + k: v for k, v in erf_sd.items()}, num_classes=12)
    assert conv.model_kwargs == {"num_classes": 12}
    # without the encoder's classifier, the model is built without one (nothing is made up)
    no_cls = {k: v for k, v in erf_sd.items() if not k.startswith("encoder.output_conv.")}
    conv = convert_state_dict("erfnet-eromera", no_cls)
    assert conv.model_kwargs == {"num_classes": 12, "encoder_classifier": False}
    rtseg.create_model(conv.model, **conv.model_kwargs).load_state_dict(conv.state_dict)


def test_encoder_only_outputs(shared_dir, tmp_path):
    x = torch.rand(2, 3, 60, 84)  # not multiples of 8: padded inside, cropped back
    for name in ("enet", "erfnet"):
        model = rtseg.create_model(name, num_classes=5).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 5, 60, 84)
            assert model(x, encoder_only=True).shape == (2, 5, 8, 11)
        bare = rtseg.create_model(name, num_classes=5, encoder_classifier=False)
        assert len(list(bare.parameters())) == len(list(model.parameters())) - 2
    # converted ENet weights carry no encoder classifier: asking for one is an error, not noise
    src = shared_file(shared_dir, "parity/enet_davidtvs_state_dict.pth")
    model = rtseg.load_model(convert_file("enet-davidtvs", src, tmp_path / "e.pt"))
    assert model.encoder.classifier is None
    with pytest.raises(RuntimeError, match="encoder_classifier=False"):
        model(x, encoder_only=True)


def test_enet_paper_switches_change_the_network():
    base = rtseg.create_model("enet", num_classes=4)
    paper = rtseg.create_model("enet", num_classes=4, decoder_act="prelu", initial_pool=2)
    assert isinstance(base.decoder.stage4.blocks[0].act, torch.nn.ReLU)
    assert isinstance(paper.decoder.stage4.blocks[0].act, torch.nn.PReLU)
    assert paper.encoder.initial.pool.kernel_size == 2 and base.encoder.initial.pool.kernel_size == 3
    x = torch.rand(1, 3, 32, 48)
    assert paper.eval()(x).shape == (1, 4, 32, 48)
    with pytest.raises(ValueError, match="decoder_act"):
        rtseg.create_model("enet", num_classes=4, decoder_act="gelu")
    with pytest.raises(ValueError, match="initial_pool"):
        rtseg.create_model("enet", num_classes=4, initial_pool=4)


def test_max_unpool_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12, 18)
    x[:, :, :4, :4] = 1.0  # ties: both must place the value at the same (first) position
    pooled, idx = F.max_pool2d(x, 2, stride=2, return_indices=True)
    expected = F.max_unpool2d(pooled, idx, 2, output_size=x.shape[-2:])
    assert torch.equal(max_unpool2x2(pooled, idx), expected)


def test_enet_published_params_close():
    # ENet paper, Table 3: 0.37 M parameters (Cityscapes-sized head); the port measures 0.35 M
    info = rtseg.model_info("enet")
    model = rtseg.create_model("enet", num_classes=19, encoder_classifier=False)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - info.published["params"]) / info.published["params"] < 0.06


def test_enet_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = rtseg.create_model("enet", num_classes=6).eval()
    # random BN statistics so the comparison is not dominated by near-identity layers
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 64, 96)
    path = tmp_path / "enet.onnx"
    # the TorchScript exporter writes opset 17 directly; dynamo=True also works but only at opset 18
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b", 2: "h", 3: "w"}},
    )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"MaxPool", "ScatterElements"} <= ops and "MaxUnpool" not in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inp in (x, torch.rand(2, 3, 48, 80)):
        with torch.no_grad():
            ref = model(inp).numpy()
        out = sess.run(None, {"image": inp.numpy()})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= TOL
