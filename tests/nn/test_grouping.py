"""Gradual grouping (rtseg.nn.grouping): mask, schedule, surgery, deploy conversion, engine integration.

Everything runs on tiny inputs; the engine tests train a registered ~10k-parameter model with ESSNet
conv-modules on 40 x 56 synthetic scenes for three epochs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtseg
from rtseg.checkpoint import load_model, save_model
from rtseg.engine.config import ConfigError, load_config
from rtseg.eval.profiler import count_flops, count_params
from rtseg.models import SegmentationModel, create_model, list_models, register_model
from rtseg.models._essnet_blocks import ConvModule
from rtseg.nn.grouping import (
    AlphaSchedule,
    MaskedConv2d,
    block_diagonal_mask,
    convert_to_deploy,
    get_alpha,
    make_gradual,
    masked_convs,
    set_alpha,
)

TINY = "tiny_gradual_test"


class _TinyEncoder(nn.Module):
    def __init__(self, num_classes: int, w: int) -> None:
        super().__init__()

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.layers = nn.Sequential(
            down(3, w), down(w, w), ConvModule(w, 0.1), down(w, w), ConvModule(w, 0.1, 2)
        )
        self.output_conv = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyGradual(SegmentationModel):
    """Strided 3x3 convs and two ESSNet conv-modules (1/8), 1x1 encoder classifier, 1x1-conv decoder."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__(num_classes)
        self.encoder = _TinyEncoder(num_classes, width)
        self.decoder = nn.Sequential(
            nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, num_classes, 1)
        )

    def forward_padded(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        f = self.encoder(x)
        if encoder_only:
            return self.encoder.output_conv(f)
        return F.interpolate(self.decoder(f), scale_factor=8, mode="bilinear", align_corners=False)


if TINY not in list_models():
    register_model(TINY, family="test", description="tiny gradual-grouping test model")(TinyGradual)

RUN = {
    "model": TINY,
    "dataset": "synthetic",
    "dataset_kwargs": {"size": (40, 56), "length": 8},
    "crop": (32, 48),
    "batch_size": 4,
    "val_batch_size": 8,
    "workers": 0,
    "progress": False,
    "amp": False,
    "seed": 5,
    "epochs": 3,
    "gradual_groups": 2,
    "gradual_shuffle": True,
    "alpha_epochs": 2,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTSEG_CACHE", str(tmp_path_factory.getbasetemp() / "rtseg-cache"))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so that folding and grouping are really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _loop_grouped_conv(x: torch.Tensor, conv: nn.Conv2d, g: int) -> torch.Tensor:
    """Reference: a ``g``-group conv computed group by group from the diagonal blocks of a dense weight."""
    w, b = conv.weight, conv.bias
    og, ig = conv.out_channels // g, conv.in_channels // g
    outs = [
        F.conv2d(
            x[:, i * ig : (i + 1) * ig],
            w[i * og : (i + 1) * og, i * ig : (i + 1) * ig],
            None if b is None else b[i * og : (i + 1) * og],
            conv.stride,
            conv.padding,
            conv.dilation,
        )
        for i in range(g)
    ]
    return torch.cat(outs, 1)


# ------------------------------------------------------------------------------------------------ mask
@pytest.mark.parametrize(("cout", "cin", "g"), [(8, 8, 2), (12, 6, 3), (16, 8, 4), (6, 12, 2)])
def test_mask_matches_loop_reference(cout: int, cin: int, g: int) -> None:
    alpha = 0.3
    ref = torch.empty(cout, cin)
    for o in range(cout):  # the released code's four-loop construction, written per element
        for i in range(cin):
            ref[o, i] = 1.0 if o // (cout // g) == i // (cin // g) else alpha
    assert torch.equal(block_diagonal_mask(cout, cin, g), (ref == 1.0).float())
    conv = MaskedConv2d(cin, cout, 3, padding=1, mask_groups=g, alpha=alpha)
    assert torch.allclose(conv.weight_mask()[:, :, 0, 0], ref)
    assert int(block_diagonal_mask(cout, cin, g).sum()) == cout * cin // g
    with pytest.raises(ValueError, match="groups"):
        block_diagonal_mask(cout, cin + 1, g)


@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 1},
        {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2},
        {"kernel_size": (3, 1)},
    ],
)
def test_alpha_one_is_the_dense_conv_and_alpha_zero_the_grouped_one(kw: dict) -> None:
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 12, **kw)
    x = torch.randn(2, 8, 9, 11)
    m = MaskedConv2d.from_conv(dense, 4)
    assert set(m.state_dict()) == {"weight", "bias", "alpha"}  # dense keys + alpha: dense weights load
    torch.testing.assert_close(m(x), dense(x), rtol=0, atol=0)
    set_alpha(m, 0.0)
    ref = _loop_grouped_conv(x, dense, 4)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    grouped = m.to_grouped()
    assert grouped.groups == 4 and grouped.weight.shape == (12, 2, *dense.weight.shape[2:])
    torch.testing.assert_close(grouped(x), ref, rtol=1e-5, atol=1e-5)
    # in between, the off-group blocks are scaled by alpha exactly
    set_alpha(m, 0.25)
    off = dense(x) - ref
    torch.testing.assert_close(m(x), ref + 0.25 * off, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="alpha=0.25"):
        m.to_grouped()
    # gradients reach the off-group weights only while alpha > 0
    set_alpha(m, 0.0)
    m.zero_grad()
    m(x).sum().backward()
    assert m.weight.grad[~block_diagonal_mask(12, 8, 4).bool()].abs().max() == 0


@pytest.mark.parametrize("shuffle", [False, True], ids=["dg", "dgs"])
def test_alpha_zero_conv_module_equals_native_grouped_module(shuffle: bool) -> None:
    """A gradual ESSNet conv-module at alpha = 0 is the native DGC / DGCS module (shuffle in the same place)."""
    torch.manual_seed(1)
    net = _randomise_bn(nn.Sequential(ConvModule(16, 0.0, dilation=2)))
    make_gradual(net, 4, scope="all", shuffle=shuffle)
    assert net[0].shuffle is shuffle and net[0].groups == 4
    set_alpha(net, 0.0)
    net.eval()
    x = torch.randn(2, 16, 10, 12)
    native = ConvModule(16, 0.0, dilation=2, groups=4, shuffle=shuffle).eval()
    native.load_state_dict(convert_to_deploy(net, fold_bn=False)[0].state_dict())
    torch.testing.assert_close(native(x), net(x), rtol=1e-5, atol=1e-5)
    other = ConvModule(16, 0.0, dilation=2, groups=4, shuffle=not shuffle).eval()
    other.load_state_dict(native.state_dict())
    assert (other(x) - net(x)).abs().max() > 1e-2  # the shuffle's place matters: the check can fail


def test_alpha_schedules() -> None:
    lin = AlphaSchedule("linear", epochs=4, start=1)
    assert [lin(e) for e in range(7)] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert lin.zero_epoch == 5
    cos = AlphaSchedule("cosine", epochs=4)
    vals = [cos(e) for e in range(6)]
    assert vals[0] == 1.0 and vals[4] == vals[5] == 0.0
    assert vals[2] == pytest.approx(0.5) and vals[1] == pytest.approx(0.5 + 0.5**0.5 / 2)
    step = AlphaSchedule("step", epochs=8, steps=4)
    assert [step(e) for e in range(10)] == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]
    assert AlphaSchedule("step", epochs=3, steps=3)(1) == pytest.approx(2 / 3)  # no float floor slip
    with pytest.raises(ValueError, match="unknown"):
        AlphaSchedule("exp")
    with pytest.raises(ValueError, match="epochs >= 1"):
        AlphaSchedule("linear", epochs=0)


# ---------------------------------------------------------------------------------------- surgery
def test_make_gradual_selects_eligible_convs_per_scope() -> None:
    essnet = create_model("essnet_d", num_classes=7)
    make_gradual(essnet, 2)
    names = essnet.rtseg_grouping["modules"]
    assert len(names) == 26 and all(n.startswith("encoder.") and "conv1L_" in n for n in names)
    assert type(essnet.encoder.output_conv) is nn.Conv2d  # the classifier is never grouped

    torch.manual_seed(0)
    enet = create_model("enet", num_classes=7).eval()
    ref = copy.deepcopy(enet)
    make_gradual(enet, 4, scope="all")
    convs = dict(masked_convs(enet))
    assert "encoder.classifier" not in convs and any(n.endswith("proj.conv") for n in convs)
    assert all(m.kernel_size == (1, 1) and m.mask_groups == 4 for m in convs.values())
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(enet(x), ref(x), rtol=0, atol=0)  # alpha = 1: the same network

    erf = create_model("erfnet", num_classes=7)
    with pytest.raises(ValueError, match="no conv in scope 'decoder'"):
        make_gradual(erf, 2, scope="decoder")  # ERFNet's decoder has no 1x1 conv...
    make_gradual(erf, 2, scope="decoder", kernels="all")  # ...but 3x1 / 1x3 convs that can be grouped
    assert {m.kernel_size for _, m in masked_convs(erf)} == {(3, 1), (1, 3)}
    with pytest.raises(ValueError, match="already"):
        make_gradual(erf, 2, scope="decoder", kernels="all")
    with pytest.raises(ValueError, match="shuffle=True"):
        make_gradual(create_model("enet", num_classes=7), 2, scope="all", shuffle=True)
    with pytest.raises(ValueError, match=">= 2"):
        make_gradual(create_model("enet", num_classes=7), 1)


@pytest.mark.parametrize(
    ("groups", "shuffle", "native"), [(2, True, "essnet_dg2s"), (4, False, "essnet_dg4")]
)
def test_convert_essnet_d_to_the_native_grouped_model(groups: int, shuffle: bool, native: str) -> None:
    torch.manual_seed(2)
    model = _randomise_bn(create_model("essnet_d", num_classes=8))
    make_gradual(model, groups, shuffle=shuffle)
    set_alpha(model, 0.0)
    model.eval()
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        y = model(x)
    dense_macs = count_flops(model, (64, 64))["macs"]

    kept = convert_to_deploy(model, fold_bn=False)
    assert kept.rtseg_name == native and not hasattr(kept, "rtseg_grouping")
    assert not any(True for _ in masked_convs(kept)) and get_alpha(model) == 0.0  # the input is untouched
    ref = create_model(native, num_classes=8).eval()
    assert count_params(kept) == count_params(ref)
    macs = count_flops(kept, (64, 64))["macs"]
    assert macs == count_flops(ref, (64, 64))["macs"] < dense_macs
    ref.load_state_dict(kept.state_dict())  # strict: the state dict of the native model
    with torch.no_grad():
        torch.testing.assert_close(kept(x), y, rtol=0, atol=1e-5)
        torch.testing.assert_close(ref(x), y, rtol=0, atol=1e-5)

    folded = convert_to_deploy(model)  # default: BN folded too
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded.rtseg_grouping["bn_folded"] and folded.rtseg_grouping["form"] == "grouped"
    with torch.no_grad():
        torch.testing.assert_close(folded(x), y, rtol=0, atol=1e-5)
    from rtseg.nn.fuse import fold_batchnorm

    assert count_params(folded) == count_params(fold_batchnorm(ref))


def test_checkpoints_rebuild_masked_and_converted_forms(tmp_path: Path) -> None:
    """Non-registered grouped structures (ENet with grouped 1x1s) round-trip through save/load_model."""
    torch.manual_seed(3)
    model = _randomise_bn(create_model("enet", num_classes=6))
    make_gradual(model, 2, scope="all")
    set_alpha(model, 0.25)
    model.eval()
    x = torch.rand(1, 3, 48, 64)
    save_model(model, tmp_path / "masked.pt")
    back = load_model(tmp_path / "masked.pt")
    assert back.rtseg_meta["grouping"]["alpha"] == 0.25 and get_alpha(back) == 0.25
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)

    set_alpha(model, 0.0)
    with torch.no_grad():
        y = model(x)
    for fold in (False, True):
        dep = convert_to_deploy(model, fold_bn=fold)
        assert dep.rtseg_name == "enet"  # no registered grouped ENet: the meta rebuilds the structure
        save_model(dep, tmp_path / f"dep{fold}.pt")
        again = load_model(tmp_path / f"dep{fold}.pt")
        grouped = [m for m in again.modules() if isinstance(m, nn.Conv2d) and m.groups == 2]
        assert len(grouped) == len(model.rtseg_grouping["modules"])
        assert count_params(again) == count_params(dep) < count_params(model)
        with torch.no_grad():
            torch.testing.assert_close(again(x), y, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- engine
_REF: dict[str, object] = {}


def _reference_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not _REF:
        out = tmp_path_factory.mktemp("gradual") / "ref"
        _REF.update(rtseg.train(**RUN, out=str(out)))
    return _REF


def test_training_ends_grouped_and_converts(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    res = _reference_run(tmp_path_factory)
    run = Path(res["run_dir"])
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["alpha"] for r in log] == [1.0, 0.5, 0.0]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["meta"]["epoch"] == 3 and best["meta"]["grouping"]["alpha"] == 0.0  # best = a grouped model
    assert best["meta"]["grouping"]["shuffled"] == ["encoder.layers.2", "encoder.layers.4"]

    from rtseg.cli import main

    dst = tmp_path / "deploy.pt"
    assert main(["convert", str(run / "best.pt"), str(dst), "--to", "grouped"]) == 0
    masked, dep = load_model(run / "best.pt"), load_model(dst)
    assert dep.rtseg_meta["converted_from"]["to"] == "grouped"
    assert sorted(m.groups for m in dep.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)[:4] == [
        2,
        2,
        2,
        2,
    ]
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(dep(x), masked(x), rtol=0, atol=1e-5)
    assert count_params(dep) < count_params(masked)
    assert (
        main(["convert", str(dst), str(tmp_path / "again.pt"), "--to", "grouped"]) == 2
    )  # nothing to convert
    assert main(["convert", str(run / "best.pt"), str(tmp_path / "x.pt")]) == 2  # neither --source nor --to


def test_resume_restores_alpha(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = _reference_run(tmp_path_factory)
    import rtseg.engine.state as engine
    real_save, calls = engine.atomic_torch_save, []

    def save_then_die(obj, path):
        real_save(obj, path)
        calls.append(path)
        if len(calls) == 2:  # killed right after the alpha = 0.5 epoch's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "atomic_torch_save", save_then_die)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        rtseg.train(**RUN, out=str(out))
    monkeypatch.setattr(engine, "atomic_torch_save", real_save)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["global_epoch"] == 2
    alphas = {k: float(v) for k, v in state["model"].items() if k.endswith(".alpha")}
    assert len(alphas) == 4 and set(alphas.values()) == {0.5}
    res = rtseg.train(resume=out)
    assert [h["alpha"] for h in res["history"]] == [1.0, 0.5, 0.0]
    assert get_alpha(res["model"]) == 0.0
    a = torch.load(out / "last.pt", weights_only=True)["model"]
    b = torch.load(Path(ref["run_dir"]) / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)  # the same run as the uninterrupted one


def test_decoder_warmup_keeps_the_encoder_still(tmp_path: Path) -> None:
    torch.manual_seed(0)
    init = create_model(TINY, num_classes=7)
    save_model(init, tmp_path / "init.pt")
    cfg = {**RUN, "gradual_groups": 0, "gradual_shuffle": False, "epochs": 1, "val_split": None}
    res = rtseg.train(**cfg, init=str(tmp_path / "init.pt"), decoder_warmup_epochs=1, out=str(tmp_path / "w"))
    rec = res["history"][0]
    assert rec["encoder_lr"] == pytest.approx(rec["lr"] * 1e-16)
    after, before = res["model"].state_dict(), init.state_dict()
    enc_moved = max(
        (after[k] - before[k]).abs().max().item()
        for k in before
        if k.startswith("encoder.") and before[k].is_floating_point() and "running" not in k
    )
    dec_moved = max(
        (after[k] - before[k]).abs().max().item()
        for k in before
        if k.startswith("decoder.") and before[k].is_floating_point() and "running" not in k
    )
    assert enc_moved < 1e-12 and dec_moved > 1e-4


def test_config_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match="would not reach 0"):
        load_config(None, {"gradual_groups": 2, "epochs": 5, "alpha_epochs": 5})
    with pytest.raises(ConfigError, match="did you mean cosine"):
        load_config(None, {"alpha_schedule": "cosin"})
    with pytest.raises(ConfigError, match="gradual_shuffle"):
        load_config(None, {"gradual_shuffle": True})
    cfg = load_config(None, ["gradual_groups=4", "alpha_epochs=3", "epochs=4", "gradual_scope=all"])
    assert (cfg.gradual_groups, cfg.alpha_epochs, cfg.gradual_scope) == (4, 3, "all")


def test_pretrained_encoder_gets_its_own_lr_and_weight_decay(tmp_path: Path) -> None:
    """Thesis §4.2: a pretrained encoder fine-tuned at lr 1.25e-4 / wd 0.5e-4 while the rest uses lr / wd."""
    torch.manual_seed(0)
    init = create_model(TINY, num_classes=7)
    save_model(init, tmp_path / "init.pt")
    cfg = {**RUN, "gradual_groups": 0, "gradual_shuffle": False, "epochs": 1, "val_split": None}
    res = rtseg.train(
        **cfg, init=str(tmp_path / "init.pt"), encoder_lr=1.25e-4, encoder_weight_decay=0.5e-4, lr=5e-4,
        scheduler="none", out=str(tmp_path / "e"),
    )
    rec = res["history"][0]
    assert rec["lr"] == pytest.approx(5e-4) and rec["encoder_lr"] == pytest.approx(1.25e-4)
    # with the warm-up as well, the near-frozen factor applies to the encoder's own lr
    res = rtseg.train(
        **cfg, init=str(tmp_path / "init.pt"), encoder_lr=1.25e-4, decoder_warmup_epochs=1, scheduler="none",
        out=str(tmp_path / "w"),
    )
    assert res["history"][0]["encoder_lr"] == pytest.approx(1.25e-4 * 1e-16)
