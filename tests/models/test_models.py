"""Registry-driven tests: every registered model gets them for free (timm/smp style)."""

from __future__ import annotations

import pytest
import torch

import rtseg
from rtseg.checkpoint import CheckpointError, load_checkpoint
from rtseg.models import model_info

MODELS = rtseg.list_models()
NUM_CLASSES = 5


def _make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return rtseg.create_model(name, num_classes=NUM_CLASSES)


def test_registry_is_populated_and_sorted():
    assert len(MODELS) >= 2 and MODELS == sorted(MODELS)
    assert {"enet", "erfnet"} <= set(MODELS)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        rtseg.register_model(MODELS[0])(lambda num_classes: None)


def test_unknown_model_suggests_close_match():
    with pytest.raises(KeyError, match="did you mean enet"):
        rtseg.create_model("enett")


@pytest.mark.parametrize("name", MODELS)
def test_contract_shape_determinism_round_trip(name, tmp_path):
    """Odd input sizes, encoder-only scores at 1/8, eval determinism and a save/load round trip."""
    model = _make(name).eval()
    # non-trivial BN statistics, so buffers are part of what must round-trip
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 97, 131)
    with torch.no_grad():
        y = model(x)
        enc = model(x, encoder_only=True)
        assert torch.equal(y, model(x)), "eval forward is not deterministic"
    assert y.shape == (2, NUM_CLASSES, 97, 131)
    assert enc.shape == (2, NUM_CLASSES, 13, 17)  # ceil(97/8), ceil(131/8)
    assert torch.isfinite(y).all()

    names = [f"c{i}" for i in range(NUM_CLASSES)]
    path = rtseg.save_model(model, tmp_path / "m.pt", class_names=names, note="test")
    loaded = rtseg.load_model(path)
    assert not loaded.training and loaded.rtseg_name == name
    assert loaded.rtseg_meta["class_names"] == names and loaded.rtseg_meta["input"]["range"] == [0.0, 1.0]
    with torch.no_grad():
        assert torch.equal(y, loaded(x))


@pytest.mark.parametrize("name", MODELS)
def test_gradient_reaches_every_parameter(name):
    model = _make(name).train()
    x = torch.rand(2, 3, 64, 80)
    loss = model(x).square().mean() + model(x, encoder_only=True).square().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def _export_param(name: str):
    # Exporting costs seconds per model: the fast suite exports one model per distinct structure
    # (dense "d" and grouped+shuffled "dg2s" of each backbone/decoder); the other group counts,
    # which differ only in a conv's `groups`, run with -m slow.
    combinatorial = any(t in name for t in ("dg4", "dg8")) or ("dg2" in name and "dg2s" not in name)
    return pytest.param(name, marks=pytest.mark.slow) if combinatorial else name


@pytest.mark.parametrize("name", [_export_param(n) for n in MODELS])
def test_onnx_export_or_declared_refusal(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from rtseg.deploy import ExportError, export_onnx, verify_onnx

    model = _make(name).eval()
    if not model_info(name).exportable:
        with pytest.raises(ExportError, match="cannot be exported"):
            export_onnx(model, tmp_path / "m.onnx", size=(64, 96))
        return
    path = export_onnx(model, tmp_path / "m.onnx", size=(64, 96))
    res = verify_onnx(model, path, size=(64, 96))
    assert res["max_abs"] < 1e-4 and res["agreement"] > 0.999


def test_load_rejects_non_rtseg_files(tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save({"w": torch.zeros(2)}, bare)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_checkpoint(bare)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        rtseg.load_model(junk)
    with pytest.raises(FileNotFoundError, match="nope"):
        rtseg.load_model(tmp_path / "nope.pt")


def test_load_rejects_weights_of_another_architecture(tmp_path):
    other = next(m for m in MODELS if m != "enet")
    model = _make("enet")
    path = rtseg.save_model(model, tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = other
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"do not fit model '{other}'"):
        rtseg.load_model(path)


def test_save_is_atomic_when_serialisation_fails(tmp_path, monkeypatch):
    model = _make("enet")
    path = rtseg.save_model(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        rtseg.save_model(model, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_load_rejects_same_keys_with_other_shapes(tmp_path):
    # erfnet with another class count: same keys, different classifier shapes
    path = rtseg.save_model(rtseg.create_model("erfnet", num_classes=3), tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_kwargs"]["num_classes"] = 4
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        rtseg.load_model(path)


def test_saved_checkpoint_has_ordinary_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = rtseg.save_model(_make("enet"), tmp_path / "m.pt")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
