"""The author's other released ESSNet files: dense ESSNet-D (Cityscapes) and the ImageNet-pretrained encoders.

Golden outputs: ``reference_outputs_d_imagenet.npz`` was produced by the author's own code on these files
(../shared/README.md). Skips when ../shared is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_file

from rtseg.checkpoint import CheckpointError, convert_file, load_checkpoint, load_model
from rtseg.engine.config import TrainConfig
from rtseg.models import create_model
from rtseg.models.convert import convert_state_dict, load_foreign_state_dict

WEIGHTS = "weights/essnet-official"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@pytest.fixture(scope="module")
def ref_d(shared_dir):
    return dict(np.load(shared_file(shared_dir, f"{WEIGHTS}/reference_outputs_d_imagenet.npz")))


@pytest.fixture(scope="module")
def images(shared_dir):
    return dict(np.load(shared_file(shared_dir, f"{WEIGHTS}/reference_outputs.npz")))


def _image(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0


# ------------------------------------------------------------------------------------ dense ESSNet-D
@pytest.fixture(scope="module")
def essnet_d(shared_dir):
    raw = load_foreign_state_dict(shared_file(shared_dir, f"{WEIGHTS}/essnet_d_cityscapes.pth"))
    conv = convert_state_dict("essnet-official", raw)
    model = create_model(conv.model, **conv.model_kwargs)
    model.load_state_dict(conv.state_dict, strict=True)
    return raw, model.eval(), conv


def test_essnet_d_converts_to_dense_final_essnet(essnet_d):
    raw, model, conv = essnet_d
    assert conv.model == "essnet_d" and conv.model_kwargs == {"num_classes": 20, "encoder_classifier": False}
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))
    learnable = sum(
        v.numel() for k, v in raw.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert sum(p.numel() for p in model.parameters()) == learnable == 421_056


def test_essnet_d_logits_small(essnet_d, images, ref_d):
    with torch.no_grad():
        out = essnet_d[1](_image(images["image_small"]))[0].numpy()
    ref = ref_d["logits_small_d"]
    assert out.shape == ref.shape == (20, 128, 256)
    assert np.abs(out - ref).max() <= 1e-4


def test_essnet_d_argmax_large(essnet_d, images, ref_d):
    with torch.no_grad():
        pred = essnet_d[1](_image(images["image_large"]))[0].argmax(0).numpy()
    agree = (pred == ref_d["argmax_large_d"]).mean()
    assert agree >= 0.9999, f"argmax agrees on only {agree:.6f} of the pixels"


# ------------------------------------------------------------------------- ImageNet-pretrained encoders
def _imagenet_input(ref_d) -> torch.Tensor:
    x = (ref_d["image_imagenet"].astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x).permute(2, 0, 1)[None]


@pytest.mark.parametrize("g", [2, 4])
def test_imagenet_encoder_reproduces_author_features(shared_dir, ref_d, tmp_path, g):
    src = shared_file(shared_dir, f"{WEIGHTS}/essnet_dg{g}_imagenet_encoder.pth.tar")
    out = convert_file("essnet-official-imagenet", src, tmp_path / f"essnet_dg{g}s_imagenet.pt")
    model = load_model(out).eval()
    assert model.rtseg_name == f"essnet_dg{g}s"
    ck = load_checkpoint(out)
    meta = ck["meta"]
    assert "freshly initialised" in meta["pretrained"]["decoder"]
    assert meta["converted_from"] == {"source": "essnet-official-imagenet", "file": src.name}
    with torch.no_grad():
        feats = model.encoder(_imagenet_input(ref_d))[0].numpy()
    ref = ref_d[f"encoder_features_imagenet_dg{g}"]
    assert feats.shape == ref.shape == (128, 28, 28)
    assert np.abs(feats - ref).max() <= 1e-4
    # the dropped ImageNet head, applied by hand to rtseg's features, gives the author's logits
    raw = load_foreign_state_dict(src)
    pooled = torch.nn.functional.max_pool2d(torch.from_numpy(feats)[None], 2).mean(dim=(-2, -1))
    logits = pooled @ raw["module.classifier.linear.weight"].T + raw["module.classifier.linear.bias"]
    assert np.abs(logits[0].numpy() - ref_d[f"logits_imagenet_dg{g}"]).max() <= 1e-3


def test_imagenet_checkpoint_starts_training(shared_dir, tmp_path):
    """``init=OUT.pt`` copies every encoder tensor of the converted file into the model being trained."""
    from rtseg.engine.optim import init_from as _init_from

    src = shared_file(shared_dir, f"{WEIGHTS}/essnet_dg2_imagenet_encoder.pth.tar")
    out = convert_file("essnet-official-imagenet", src, tmp_path / "enc.pt")
    cfg = TrainConfig(model="essnet_dg2s", init=str(out))
    model = create_model(cfg.model, num_classes=20)
    n = _init_from(model, cfg.init)["loaded"]
    raw = load_foreign_state_dict(src)
    enc = {k[len("module.features."):]: v for k, v in raw.items() if k.startswith("module.features.encoder.")}
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in enc.items() if not k.endswith("num_batches_tracked"))
    assert n >= len([k for k in enc if not k.endswith("num_batches_tracked")])


def test_imagenet_source_rejects_other_files(shared_dir):
    seg = load_foreign_state_dict(shared_file(shared_dir, f"{WEIGHTS}/essnet_dg2_cityscapes.pth"))
    with pytest.raises(CheckpointError, match=r"module\.features\.encoder.*missing.*--source essnet-official"):
        convert_state_dict("essnet-official-imagenet", seg)
    enc = load_foreign_state_dict(shared_file(shared_dir, f"{WEIGHTS}/essnet_dg2_imagenet_encoder.pth.tar"))
    with pytest.raises(CheckpointError, match=r"decoder\.output_conv\.weight.*missing.*essnet-official-imagenet"):
        convert_state_dict("essnet-official", enc)
    bad = dict(enc)
    bad["module.classifier.linear.weight"] = torch.zeros(10, 128)
    with pytest.raises(CheckpointError, match=r"classifier\.linear\.weight.*\(10, 128\)"):
        convert_state_dict("essnet-official-imagenet", bad)
    bad = dict(enc)
    bad["module.features.encoder.layers.3.conv1L_1.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(CheckpointError, match=r"layers\.3\.conv1L_1\.weight.*\(64, 64, 3, 3\)"):
        convert_state_dict("essnet-official-imagenet", bad)
    bad = {k: v for k, v in enc.items() if "layers.9.bn1_1" not in k}
    with pytest.raises(CheckpointError, match=r"missing \['encoder\.layers\.9\.bn1_1"):
        convert_state_dict("essnet-official-imagenet", bad)
    with pytest.raises(CheckpointError, match="ImageNet encoder"):
        convert_state_dict("essnet-official-imagenet", {"conv.weight": torch.zeros(1)})
