"""timm/torch.hub-style entry points: create_model(pretrained=...), list_models(pretrained=True), hubconf."""

from __future__ import annotations

import pytest
import torch

import rtseg
from rtseg.checkpoint import default_weights, load_checkpoint, read_index
from rtseg.eval.profiler import profile_model

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_list_models_pretrained_are_shipped_names() -> None:
    names = rtseg.list_models(pretrained=True)
    assert "enet_camvid" in names and names == sorted(names)
    assert "enet" not in names and "enet" in rtseg.list_models()
    assert rtseg.list_models("enet*", pretrained=True) == ["enet_camvid"]


def test_create_model_pretrained_loads_the_shipped_weights() -> None:
    m = rtseg.create_model("enet", pretrained=True)
    ref = rtseg.load_model("enet_camvid")
    assert m.rtseg_meta["shipped_as"] == "enet_camvid" and not m.training
    for (k, a), b in zip(m.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert rtseg.create_model("enet_camvid", pretrained=True).rtseg_kwargs == ref.rtseg_kwargs
    assert rtseg.create_model("enet", pretrained="enet_camvid").rtseg_meta["shipped_as"] == "enet_camvid"
    # the default of an architecture with several shipped weights is the one with the best val mIoU
    index = read_index()
    dg2s = [n for n in rtseg.list_models(pretrained=True) if index[n]["model"] == "essnet_dg2s"]
    assert len(dg2s) >= 2, dg2s
    best = default_weights("essnet_dg2s")
    assert best in dg2s and all(index[best]["val_miou"] >= index[n]["val_miou"] for n in dg2s)


def test_create_model_untrained_and_errors() -> None:
    assert rtseg.create_model("enet", num_classes=5).rtseg_kwargs == {"num_classes": 5}
    assert rtseg.create_model("enet").rtseg_kwargs == {"num_classes": 19}
    assert rtseg.create_model("enet_camvid").rtseg_kwargs["num_classes"] == 11  # that architecture, untrained
    with pytest.raises(ValueError, match="init=enet_camvid"):
        rtseg.create_model("enet", num_classes=5, pretrained=True)
    with pytest.raises(ValueError, match="'erfnet' model, not 'enet'"):
        rtseg.create_model("enet", pretrained="erfnet_camvid")
    with pytest.raises(KeyError, match="did you mean"):
        rtseg.create_model("enett", pretrained=True)
    with pytest.raises(FileNotFoundError, match="no shipped weights"):
        rtseg.create_model("essnet_dg8", pretrained=True)


def test_shipped_names_wherever_weights_are_taken() -> None:
    assert load_checkpoint("enet_camvid")["model"] == "enet"  # so train init=enet_camvid works
    with pytest.raises(ValueError, match="did you mean enet_camvid"):
        load_checkpoint("enet_camvd")
    p = profile_model("enet_camvid", size=(64, 96), latency=False, memory=False)
    assert p.model == "enet_camvid" and p.params == sum(t.numel() for t in rtseg.load_model("enet_camvid").parameters())


def test_hubconf_local() -> None:
    m = torch.hub.load(str(REPO_ROOT), "enet", source="local", pretrained=True, trust_repo=True)
    assert m.rtseg_meta["shipped_as"] == "enet_camvid"
    m = torch.hub.load(str(REPO_ROOT), "erfnet", source="local", num_classes=4, trust_repo=True)
    assert m(torch.rand(1, 3, 32, 48)).shape == (1, 4, 32, 48)
