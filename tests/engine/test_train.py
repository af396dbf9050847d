"""Training engine: augmentation, losses, two-stage training, checkpoints, kill/resume, DDP, CLI.

The engine tests use a tiny registered model (a few thousand parameters) on the built-in
synthetic dataset at 40 x 56, so that each full run takes about a second; one test trains the
real ENet for a few steps to check the encoder-only stage against a real model.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtseg
from rtseg.data import SyntheticStreet
from rtseg.data.transforms import AffineParams, TrainTransform, affine_crop, downsample_label, pad_collate
from rtseg.engine.config import ConfigError
from rtseg.engine.losses import (
    WeightedCrossEntropy,
    class_weights,
    enet_class_weights,
    median_frequency_weights,
)
from rtseg.models import SegmentationModel, list_models, register_model

TESTS = Path(__file__).resolve().parent
TINY = "tiny_train_test"


class TinySeg(SegmentationModel):
    """Three stride-2 convs (1/8), a 1x1 encoder classifier, and an upsampling decoder; has dropout."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__(num_classes)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.encoder = nn.Sequential(
            *block(3, width), *block(width, width), nn.Dropout2d(0.2), *block(width, width)
        )
        self.encoder_head = nn.Conv2d(width, num_classes, 1)
        self.decoder = nn.Conv2d(width, num_classes, 3, padding=1)

    def forward_padded(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        f = self.encoder(x)
        if encoder_only:
            return self.encoder_head(f)
        return F.interpolate(self.decoder(f), scale_factor=8, mode="bilinear", align_corners=False)


if TINY not in list_models():
    register_model(TINY, family="test", description="tiny test model")(TinySeg)

#: a complete small run: 16 train / 8 val synthetic scenes at 40x56, 32x48 crops, 4 steps an epoch
BASE = {
    "model": TINY,
    "dataset": "synthetic",
    "dataset_kwargs": {"size": (40, 56), "length": 16},
    "crop": (32, 48),
    "batch_size": 4,
    "val_batch_size": 4,
    "workers": 0,
    "progress": False,
    "seed": 3,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # class_frequencies caches counts on disk: keep them out of the user's ~/.cache
    monkeypatch.setenv("RTSEG_CACHE", str(tmp_path_factory.getbasetemp() / "rtseg-cache"))


def _val_len8(monkeypatch: pytest.MonkeyPatch, n: int = 8) -> None:
    """Make the synthetic val split ``n`` samples (the train split length comes from BASE)."""
    import rtseg.data.registry as reg

    builder, needs_root = reg.DATASETS["synthetic"]

    def small(**kw):
        if kw.get("split") == "val":
            kw["length"] = n
        return builder(**kw)

    monkeypatch.setitem(reg.DATASETS, "synthetic", (small, needs_root))


def _states_equal(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (bit-exact comparison)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


# ---- augmentation -------------------------------------------------------------------------------


def test_affine_crop_matches_interpolate_and_flip() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 36, 48), dtype=torch.uint8, generator=g)
    lab = torch.randint(0, 12, (36, 48), generator=g)
    o, l = affine_crop(img, lab, AffineParams(1.0, False, 0, 0), (36, 48))
    assert torch.equal(o, img) and torch.equal(l, lab)
    o, l = affine_crop(img, lab, AffineParams(1.0, True, 0, 0), (36, 48))
    assert torch.equal(o, img.flip(-1)) and torch.equal(l, lab.flip(-1))
    for s in (0.5, 0.7, 1.5, 2.0):
        size = (round(36 * s), round(48 * s))
        o, l = affine_crop(img, lab, AffineParams(s, False, 0, 0), size)
        ref_l = F.interpolate(lab[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        ref_o = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        assert torch.equal(l, ref_l), s  # labels: nearest, never interpolated
        assert (o.float() - ref_o).abs().max() <= 1.0, s  # uint8 rounding only
        of, lf = affine_crop(img, lab, AffineParams(s, True, 0, 0), size)
        assert torch.equal(lf, l.flip(-1)) and torch.equal(of, o.flip(-1))


def test_affine_crop_pads_outside_with_ignore() -> None:
    img = torch.full((3, 10, 12), 200, dtype=torch.uint8)
    lab = torch.zeros(10, 12, dtype=torch.int64)
    o, l = affine_crop(img, lab, AffineParams(1.0, False, -2, 3), (10, 12), ignore_index=255)
    assert (l[:2] == 255).all() and (l[:, 9:] == 255).all() and (l[2:, :9] == 0).all()
    assert (o[:, :2] == 0).all() and (o[:, 2:, :9] == 200).all()


def test_train_transform_is_a_function_of_the_rng() -> None:
    t = TrainTransform((24, 32), scale=(0.5, 2.0), hflip=0.5, translate=2)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (30, 40))
    a = t(image, label, np.random.default_rng([1, 2, 3]))
    b = t(image, label, np.random.default_rng([1, 2, 3]))
    c = t(image, label, np.random.default_rng([1, 2, 4]))
    assert a[0].shape == (3, 24, 32) and a[0].dtype == torch.uint8
    assert a[1].shape == (24, 32) and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(a[1].unique().tolist()) <= set(range(5)) | {255}  # no interpolated class ids
    # scale < 1 shrinks the image inside the crop: the rest is ignore
    small = TrainTransform((24, 32), scale=(0.5, 0.5), hflip=0.0, translate=0)(image, label, rng)[1]
    assert (small == 255).float().mean() > 0.5


def test_downsample_label_nearest_and_mode() -> None:
    lab = torch.arange(16 * 16).view(1, 16, 16) % 7
    near = downsample_label(lab, 8, "nearest")
    assert near.shape == (1, 2, 2) and near[0, 0, 0] == lab[0, 4, 4] and near[0, 1, 1] == lab[0, 12, 12]
    block = torch.zeros(1, 8, 8, dtype=torch.int64)
    block[0, :2] = 3
    block[0, 2:5] = 255  # ignore never wins
    block[0, 5:] = 1  # 24 pixels of class 1 beat 16 of class 3 and 24 ignored
    assert downsample_label(block, 8, "mode", num_classes=4).item() == 1
    assert downsample_label(torch.full((1, 8, 8), 255), 8, "mode", num_classes=4).item() == 255
    odd = downsample_label(torch.zeros(2, 37, 50, dtype=torch.int64), 8, "mode", num_classes=2)
    assert odd.shape == (2, 5, 7)  # ceil(H/8) x ceil(W/8), as the encoder-only output


def test_pad_collate_pads_label_with_ignore() -> None:
    a = (torch.ones(3, 4, 5, dtype=torch.uint8), torch.zeros(4, 5, dtype=torch.int64))
    b = (torch.ones(3, 6, 3, dtype=torch.uint8), torch.ones(6, 3, dtype=torch.int64))
    x, y = pad_collate([a, b], ignore_index=255)
    assert x.shape == (2, 3, 6, 5) and y.shape == (2, 6, 5)
    assert (y[0, 4:] == 255).all() and (y[1, :, 3:] == 255).all() and (x[0, :, 4:] == 0).all()


# ---- losses -------------------------------------------------------------------------------------


def test_class_weights_formulas() -> None:
    counts = np.array([500, 300, 200, 0])
    w = enet_class_weights(counts, c=1.02)
    p = counts / counts.sum()
    assert torch.allclose(w, torch.tensor(1 / np.log(1.02 + p), dtype=torch.float32))
    assert w[3] == pytest.approx(1 / np.log(1.02), rel=1e-6)  # an absent class gets the bound
    assert enet_class_weights(counts, c=1.10).max() < w.max()
    m = median_frequency_weights([10, 30, 0, 60])
    assert m.tolist() == pytest.approx([3.0, 1.0, 0.0, 0.5])
    assert class_weights("none", counts) is None
    with pytest.raises(ValueError, match="classes"):
        class_weights("enet", counts, num_classes=5)


def test_weighted_cross_entropy_matches_torch_and_survives_all_ignored() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, 0] = 255
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = WeightedCrossEntropy(w)(logits, target)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits, target, weight=w, ignore_index=255).item(), rel=1e-6
    )
    empty = WeightedCrossEntropy(w)(logits, torch.full_like(target, 255))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()


# ---- the engine ---------------------------------------------------------------------------------


def test_two_stage_enet_writes_run_folder_and_loadable_best(tmp_path: Path, monkeypatch) -> None:
    _val_len8(monkeypatch, 2)
    out = tmp_path / "enet"
    r = rtseg.train(
        **{**BASE, "model": "enet", "dataset_kwargs": {"size": (40, 56), "length": 4}},
        stages="encoder,full",
        encoder_epochs=1,
        epochs=1,
        out=str(out),
        ema=0.9,
    )
    assert (
        (out / "config.yaml").is_file()
        and (out / "best.pt").is_file()
        and (out / "best_encoder.pt").is_file()
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["stage"] for x in lines] == ["encoder", "full"]
    for rec in lines:
        assert {"epoch", "stage", "train_loss", "val_miou", "lr", "time_s", "img_per_s"} <= rec.keys()
        assert np.isfinite(rec["train_loss"]) and 0.0 <= rec["val_miou"] <= 1.0 and rec["img_per_s"] > 0

    best = rtseg.load_model(out / "best.pt")
    meta = best.rtseg_meta
    assert meta["class_names"] == list(SyntheticStreet.class_names)
    assert meta["dataset"] == "synthetic" and meta["stage"] == "full"
    assert meta["val_miou"] == pytest.approx(r["best_miou"]) and meta["config"]["model"] == "enet"
    x = torch.rand(1, 3, 40, 56)
    assert best(x).shape == (1, 7, 40, 56)

    # Stage one trained the encoder only: the decoder in best_encoder.pt is still its initial value.
    enc = torch.load(out / "best_encoder.pt", weights_only=True)["state_dict"]
    torch.manual_seed(3)
    fresh = rtseg.create_model("enet", num_classes=7).state_dict()
    dec = [k for k in fresh if k.startswith("decoder.") and fresh[k].is_floating_point()]
    encw = [k for k in fresh if k.startswith("encoder.") and k.endswith("weight")]
    assert dec and encw
    assert all(torch.equal(enc[k], fresh[k]) for k in dec)
    assert any(not torch.equal(enc[k], fresh[k]) for k in encw)

    state = torch.load(out / "last.pt", weights_only=True)  # everything is weights_only-loadable
    assert state["stage"] == "full" and state["global_epoch"] == 2
    assert {"torch", "numpy", "python", "loader"} <= state["rng"].keys()
    assert state["class_weights"].shape == (7,)
    assert state["config"]["stages"] == ["encoder", "full"]


def test_options_run_and_refuse_existing_run(tmp_path: Path, monkeypatch) -> None:
    _val_len8(monkeypatch)
    out = tmp_path / "opts"
    r = rtseg.train(
        **BASE,
        epochs=2,
        out=str(out),
        scheduler="plateau",
        plateau_patience=0,
        grad_clip=0.5,
        channels_last=True,
        optimizer="sgd",
        lr=0.05,
        class_weighting="median",
        stages="encoder,full",
        encoder_epochs=1,
        encoder_target="mode",
        amp=False,
        val_every=2,
    )
    lrs = [h["lr"] for h in r["history"]]
    vals = [h["val_miou"] for h in r["history"]]
    assert (
        vals[0] is not None and vals[1] is None and vals[2] is not None
    )  # val_every=2, plus each stage's end
    assert all(lr <= 0.05 for lr in lrs)
    with pytest.raises(ConfigError, match="resume"):
        rtseg.train(**BASE, epochs=2, out=str(out))
    with pytest.raises(ConfigError, match="cannot change lr"):
        rtseg.train(resume=out, lr=1.0)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        rtseg.train(resume=tmp_path / "nope")


def test_data_workers_do_not_change_the_result(tmp_path: Path, monkeypatch) -> None:
    _val_len8(monkeypatch)
    a = rtseg.train(**{**BASE, "workers": 0}, epochs=1, val_split=None, out=str(tmp_path / "w0"))
    b = rtseg.train(**{**BASE, "workers": 2}, epochs=1, val_split=None, out=str(tmp_path / "w2"))
    assert _states_equal(a["model"].state_dict(), b["model"].state_dict()) == []
    assert (tmp_path / "w0" / "best.pt").is_file()  # without validation best follows the train loss


# The child dies by SIGKILL right after its k-th checkpoint is on disk: deterministic, no polling race.
KILLED_RUN = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads({threads})
import test_train, rtseg
import rtseg.engine.state as engine_state
save, calls = engine_state.atomic_torch_save, []

def save_then_die(obj, path):
    save(obj, path)
    calls.append(path)
    if len(calls) == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)

engine_state.atomic_torch_save = save_then_die
test_train._val_len8(__import__("pytest").MonkeyPatch())
rtseg.train(**{cfg!r})
"""

_REFERENCE: dict = {}


@pytest.mark.parametrize("kill_after", [1, 2], ids=["at-stage-boundary", "mid-stage"])
def test_resume_after_sigkill_is_bit_exact(kill_after: int, tmp_path: Path, monkeypatch) -> None:
    """SIGKILL a run after its k-th epoch checkpoint, resume it: same weights as an uninterrupted run."""
    _val_len8(monkeypatch)
    cfg = dict(BASE, stages=("encoder", "full"), encoder_epochs=1, epochs=2, ema=0.9, amp=True)
    if not _REFERENCE:  # one uninterrupted reference run serves both kill points
        ref_dir = tmp_path.parent / "reference-run"
        ref = rtseg.train(**cfg, out=str(ref_dir))
        _REFERENCE.update(ref=ref, dir=ref_dir)
    ref, ref_dir = _REFERENCE["ref"], _REFERENCE["dir"]

    killed = tmp_path / "killed"
    script = KILLED_RUN.format(
        tests=str(TESTS),
        threads=torch.get_num_threads(),
        cfg={**cfg, "out": str(killed)},
        kill_after=kill_after,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, stderr=subprocess.PIPE, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}: {proc.stderr}"
    assert torch.load(killed / "last.pt", weights_only=True)["global_epoch"] == kill_after
    log = killed / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"global_epoch": 9, "trunc')  # as if the kill had torn a log line

    res = rtseg.train(resume=killed)
    a = torch.load(ref_dir / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert b["global_epoch"] == 3
    assert _states_equal(a["model"], b["model"]) == []
    assert _states_equal(a["ema"], b["ema"]) == []
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(_states_equal(sa[k], sb[k]) == [] for k in sa)
    assert a["scheduler"] == b["scheduler"]
    assert _states_equal(ref["model"].state_dict(), res["model"].state_dict()) == []
    key = ("global_epoch", "stage", "train_loss", "val_miou", "lr")
    rows = [[json.loads(x)[k] for k in key] for x in log.read_text().splitlines()]
    assert rows == [
        [json.loads(x)[k] for k in key] for x in (ref_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert res["best_miou"] == ref["best_miou"]
    assert (
        _states_equal(
            torch.load(ref_dir / "best.pt", weights_only=True)["state_dict"],
            torch.load(killed / "best.pt", weights_only=True)["state_dict"],
        )
        == []
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    _val_len8(pytest.MonkeyPatch())
    r = rtseg.train(**cfg)
    torch.save({"state": r["model"].state_dict(), "final": r["final"]}, Path(out) / f"rank{rank}.pt")


def test_ddp_two_gloo_ranks_match_and_reduce_metrics(tmp_path: Path, monkeypatch) -> None:
    import torch.multiprocessing as mp

    _val_len8(monkeypatch)
    # val_batch_size=1: every image goes through the same computation in both runs being compared
    cfg = dict(BASE, batch_size=2, epochs=2, out=str(tmp_path / "ddp"), val_batch_size=1)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _states_equal(r0["state"], r1["state"]) == []  # DDP kept the replicas identical
    assert r0["final"]["miou"] == r1["final"]["miou"]

    # the rank-sharded, all-reduced metric equals one process scoring the whole val split
    from rtseg.data import build_dataset
    from rtseg.eval.loop import evaluate_batches
    from rtseg.eval.metrics import SegMetrics

    model = rtseg.load_model(tmp_path / "ddp" / "best.pt")
    model.load_state_dict(r0["state"])
    val = build_dataset("synthetic", split="val", size=(40, 56), length=8)
    batches = [
        pad_collate([(torch.from_numpy(i).permute(2, 0, 1), torch.from_numpy(l))])
        for i, l in (val[k] for k in range(len(val)))
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks
    try:
        single = evaluate_batches(model, batches, SegMetrics(7, class_names=list(val.class_names)), amp=True)
    finally:
        torch.set_num_threads(threads)
    assert single["confusion"] == r0["final"]["confusion"]
    assert single["miou"] == pytest.approx(r0["final"]["miou"], abs=0)
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 wrote


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_train_uses_the_same_words(tmp_path: Path, monkeypatch, capsys) -> None:
    from rtseg.cli import main

    _val_len8(monkeypatch)
    out = tmp_path / "cli"
    args = [
        "train",
        f"model={TINY}",
        "dataset=synthetic",
        "dataset_kwargs={size: [40, 56], length: 16}",
        "crop=32x48",
        "batch_size=4",
        "workers=0",
        "progress=false",
        "epochs=1",
        f"out={out}",
    ]
    assert main(args) == 0
    assert "best checkpoint" in capsys.readouterr().out
    assert rtseg.load_model(out / "best.pt").rtseg_meta["config"]["crop"] == [32, 48]
    assert main(["train", "--resume", str(out)]) == 0  # a finished run resumes to a no-op

    assert main(["train", "lrr=1e-3"]) == 2
    assert "did you mean lr" in capsys.readouterr().err
    assert main(["train", "--two-stage", "--show-config", "epochs=7"]) == 0
    shown = capsys.readouterr().out
    assert "stages:\n- encoder\n- full" in shown or "stages: [encoder, full]" in shown
    assert "epochs: 7" in shown


# ---- non-finite steps and the bf16/NHWC depthwise guard -------------------------------------------
class _NaNOnSteps(WeightedCrossEntropy):
    """The engine's loss, but NaN on the given (1-based) calls: stands in for an overflowing batch."""

    bad: ClassVar[set[int]] = set()

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls = 0

    def forward(self, logits, target):
        self.calls += 1
        loss = super().forward(logits, target)
        return loss * float("nan") if self.calls in self.bad else loss


def test_nonfinite_step_is_skipped_and_weights_stay_finite(tmp_path: Path, monkeypatch, capsys) -> None:
    import rtseg.engine.trainer as engine

    monkeypatch.setattr(engine, "WeightedCrossEntropy", _NaNOnSteps)
    monkeypatch.setattr(_NaNOnSteps, "bad", {2})
    r = rtseg.train(**BASE, epochs=2, val_split=None, amp=False, out=str(tmp_path / "nan"))
    first = r["history"][0]
    assert first["skipped_steps"] == 1 and math.isfinite(first["train_loss"])
    assert "skipped_steps" not in r["history"][1]
    assert all(torch.isfinite(v).all() for v in r["model"].state_dict().values() if v.is_floating_point())
    assert "step 2: non-finite loss" in capsys.readouterr().out


def test_persistent_nonfinite_loss_stops_the_run(tmp_path: Path, monkeypatch) -> None:
    import rtseg.engine.trainer as engine
    from rtseg.errors import TrainingError

    monkeypatch.setattr(engine, "WeightedCrossEntropy", _NaNOnSteps)
    monkeypatch.setattr(engine, "MAX_BAD_STEPS", 3)
    monkeypatch.setattr(_NaNOnSteps, "bad", set(range(1, 100)))
    with pytest.raises(TrainingError, match="non-finite for 3 consecutive steps"):
        rtseg.train(**BASE, epochs=2, val_split=None, amp=False, out=str(tmp_path / "nan"))


def test_channels_last_guard_finds_dilated_depthwise_convs() -> None:
    from rtseg.engine.trainer import has_dilated_depthwise

    assert has_dilated_depthwise(rtseg.create_model("essnet_dg2s", num_classes=5))
    assert has_dilated_depthwise(rtseg.create_model("wspdnet", num_classes=5))
    assert not has_dilated_depthwise(rtseg.create_model("erfnet", num_classes=5))  # dilated, but dense
    assert not has_dilated_depthwise(rtseg.create_model("enet", num_classes=5))


# ---- stopping at a plateau, and the hardware of every epoch -------------------------------------------
def test_plateau_stop_ends_the_run_and_resume_keeps_it_ended(tmp_path: Path, monkeypatch) -> None:
    """plateau_stop_epochs=2 with a gain no run can reach: the run stops at epoch 3 (the first epoch with
    two epochs before it), says why in the log and the state, and --resume of it trains nothing more."""
    _val_len8(monkeypatch)
    out = tmp_path / "plateau"
    r = rtseg.train(**BASE, epochs=6, plateau_stop_epochs=2, plateau_stop_gain=0.99, out=str(out))
    assert len(r["history"]) == 3 and r["stopped"].startswith("plateau: ")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3] and lines[-1]["stopped"] == r["stopped"]
    assert all(x["hardware"].startswith("cpu (") for x in lines)
    assert torch.load(out / "last.pt", weights_only=True)["stopped"] == r["stopped"]
    again = rtseg.train(resume=out)
    assert len(again["history"]) == 3 and again["stopped"] == r["stopped"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    # a reachable gain never stops it; the rule is off by default
    r = rtseg.train(**BASE, epochs=3, plateau_stop_epochs=2, plateau_stop_gain=0.0, out=str(tmp_path / "go"))
    assert len(r["history"]) == 3 and r["stopped"] is None
    with pytest.raises(ConfigError, match="plateau_stop_epochs needs validation"):
        rtseg.train(**BASE, epochs=3, plateau_stop_epochs=2, val_split=None, out=str(tmp_path / "nv"))


@pytest.mark.parametrize("native_bf16", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_amp_on_cpu_is_bf16_only_where_the_cpu_has_it(native_bf16: bool, tmp_path: Path, monkeypatch, capsys) -> None:
    """amp=True autocasts to bf16 on a CPU with native bf16; elsewhere (emulated bf16, ~3x slower than fp32)
    the epochs run in fp32, the log's hardware says so, and the config keeps amp on for a resume elsewhere."""
    from rtseg.engine import trainer

    _val_len8(monkeypatch)
    monkeypatch.setattr(trainer, "cpu_supports_bf16", lambda: native_bf16)
    seen: list[bool] = []
    real = trainer.autocast
    monkeypatch.setattr(trainer, "autocast", lambda device, enabled: seen.append(enabled) or real(device, enabled))
    out = tmp_path / "amp"
    r = rtseg.train(**{**BASE, "amp": True}, epochs=1, out=str(out))
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert seen and set(seen) == {native_bf16}
    assert line["hardware"].endswith("bf16 autocast" if native_bf16 else "fp32")
    assert ("no native bf16" in capsys.readouterr().out) is not native_bf16
    assert r["config"]["amp"] is True


def test_vertical_flip_and_its_random_stream() -> None:
    """vflip (ESSNet thesis §3.4.1) turns image and label upside down; vflip=0 leaves the old random stream."""
    img = torch.arange(2 * 6 * 8, dtype=torch.uint8).view(2, 6, 8)
    lab = torch.arange(6 * 8).view(6, 8)
    o, l = affine_crop(img, lab, AffineParams(1.0, False, 0, 0, vflip=True), (6, 8))
    assert torch.equal(o, img.flip(1)) and torch.equal(l, lab.flip(0))
    o, l = affine_crop(img, lab, AffineParams(1.0, True, 0, 0, vflip=True), (6, 8))
    assert torch.equal(o, img.flip(1, 2)) and torch.equal(l, lab.flip(0, 1))
    a = TrainTransform((24, 32), scale=(0.5, 2.0), hflip=0.5, translate=2)
    b = TrainTransform((24, 32), scale=(0.5, 2.0), hflip=0.5, translate=2, vflip=0.0)
    ra, rb = np.random.default_rng(3), np.random.default_rng(3)
    assert [a.sample_params(40, 56, ra) for _ in range(20)] == [b.sample_params(40, 56, rb) for _ in range(20)]
    c = TrainTransform((24, 32), vflip=1.0)
    assert all(c.sample_params(40, 56, ra).vflip for _ in range(5))
    with pytest.raises(ConfigError, match="vflip"):
        rtseg.engine.config.load_config(None, {"vflip": 1.5})


def test_encoder_param_group_lr_and_weight_decay() -> None:
    from rtseg.engine.config import TrainConfig
    from rtseg.engine.optim import build_optimizer as _optimizer

    model = rtseg.create_model("essnet_dg2s", num_classes=5)
    cfg = TrainConfig(lr=5e-4, weight_decay=2e-4, encoder_lr=1.25e-4, encoder_weight_decay=0.5e-4)
    opt = _optimizer(model, cfg, split_encoder=True)
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["weight_decay"], g1["lr"], g1["weight_decay"]) == (5e-4, 2e-4, 1.25e-4, 0.5e-4)
    enc = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in g1["params"]} == enc
    assert len(g0["params"]) + len(g1["params"]) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="encoder_lr"):
        rtseg.engine.config.load_config(None, {"encoder_lr": 0.0})
