"""Metrics: hand-computed and reference checks, Cityscapes parity with cityscapesscripts, evaluate(), DDP reduce."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rtseg.data.base import IGNORE_INDEX, SegDataset
from rtseg.eval.metrics import SegMetrics, format_table, to_jsonable

# ---------------------------------------------------------------------------------------------
# SegMetrics


def test_hand_computed_3x3():
    # target / prediction over 10 pixels (+1 ignored); confusion rows=target:
    #   t0: p0 p0 p1        -> [2, 1, 0]
    #   t1: p1 p1 p1 p2     -> [0, 3, 1]
    #   t2: p0 p2 p2        -> [1, 0, 2]
    target = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 1, 1, 2, 0, 2, 2, 0])
    m = SegMetrics(3, class_names=["a", "b", "c"])
    m.update(pred.view(1, 1, -1), target.view(1, 1, -1))
    r = m.compute()
    assert r["confusion"] == [[2, 1, 0], [0, 3, 1], [1, 0, 2]]
    # IoU = tp / (row + col - tp): a 2/(3+3-2)=0.5, b 3/(4+4-3)=0.6, c 2/(3+3-2)=0.5
    assert r["per_class_iou"] == pytest.approx({"a": 0.5, "b": 0.6, "c": 0.5})
    assert r["miou"] == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert r["pixel_acc"] == pytest.approx(7 / 10)
    assert r["mean_class_acc"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    # Dice = 2tp / (row + col): a 4/6, b 6/8, c 4/6
    assert r["per_class_dice"] == pytest.approx({"a": 4 / 6, "b": 6 / 8, "c": 4 / 6})
    assert r["mean_f1"] == pytest.approx(r["mean_dice"])
    assert r["fwiou"] == pytest.approx((3 * 0.5 + 4 * 0.6 + 3 * 0.5) / 10)
    assert r["num_pixels"] == 10


def _slow_reference(preds, targets, c, ignore):
    conf = np.zeros((c, c), np.int64)
    for p, t in zip(preds, targets):
        for pv, tv in zip(p.ravel().tolist(), t.ravel().tolist()):
            if tv != ignore:
                conf[tv, pv] += 1
    iou = []
    for k in range(c):
        tp, fp, fn = conf[k, k], conf[:, k].sum() - conf[k, k], conf[k, :].sum() - conf[k, k]
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else float("nan"))
    return conf, iou


def test_matches_slow_reference_on_random_batches():
    g = torch.Generator().manual_seed(0)
    c = 6
    m = SegMetrics(c)
    preds, targets = [], []
    for _ in range(3):
        t = torch.randint(0, c, (2, 17, 23), generator=g)
        t[torch.rand(t.shape, generator=g) < 0.15] = IGNORE_INDEX
        t[t == 5] = 4  # class 5 never in the target ...
        p = torch.randint(0, c - 1, t.shape, generator=g)  # ... and never predicted -> NaN
        m.update(p, t)
        preds.append(p.numpy())
        targets.append(t.numpy())
    conf, iou = _slow_reference(preds, targets, c, IGNORE_INDEX)
    r = m.compute()
    assert r["confusion"] == conf.tolist()
    got = list(r["per_class_iou"].values())
    assert math.isnan(got[5]) and math.isnan(iou[5])
    np.testing.assert_allclose(got[:5], iou[:5], rtol=1e-12)
    assert r["miou"] == pytest.approx(np.nanmean(iou))
    assert math.isnan(r["per_class_acc"]["5"]) and math.isnan(r["per_class_dice"]["5"])


def test_logits_are_upsampled_to_target_and_numpy_accepted():
    c = 4
    target = np.random.default_rng(1).integers(0, c, (2, 8, 12))
    # perfect logits at half resolution, upsampled (nearest here, then bilinear inside) -> still exact on blocks
    small = target[:, ::2, ::2]
    t_blocky = np.repeat(np.repeat(small, 2, 1), 2, 2)
    logits = torch.nn.functional.one_hot(torch.from_numpy(small), c).permute(0, 3, 1, 2).float() * 10
    m = SegMetrics(c)
    p = m.update(logits, t_blocky)
    assert p.shape == (2, 8, 12)
    r = m.compute()
    # bilinear upsampling of one-hot logits keeps the block argmax except at block borders, where
    # ties/blends may differ: accuracy must still be high, and the prediction full-resolution
    assert r["num_pixels"] == t_blocky.size and r["pixel_acc"] > 0.7


def test_void_predictions_count_as_misses_and_extra_channels():
    m = SegMetrics(2)
    t = torch.tensor([[[0, 0, 1, 1]]])
    m.update(torch.tensor([[[0, 255, 1, 7]]]), t)
    r = m.compute()
    assert r["pred_void"] == [1, 1]
    assert r["per_class_iou"] == pytest.approx({"0": 0.5, "1": 0.5})
    assert r["pixel_acc"] == pytest.approx(0.5)
    # a third "void" logit channel behaves the same
    m2 = SegMetrics(2)
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, 0] = logits[0, 2, 0, 1] = logits[0, 1, 0, 2] = logits[0, 2, 0, 3] = 1
    m2.update(logits, t)
    assert m2.compute()["confusion"] == r["confusion"]


def test_bad_inputs_are_errors():
    m = SegMetrics(3)
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="C >= 3"):
        m.update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        SegMetrics(3, class_names=["a"])


def test_empty_metrics_are_nan_and_json_safe():
    r = SegMetrics(2).compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"])
    text = json.dumps(to_jsonable(r), allow_nan=False)
    assert json.loads(text)["miou"] is None


def test_table_and_plots(tmp_path):
    m = SegMetrics(3, class_names=["road", "car", "sky"])
    m.update(torch.tensor([[[0, 1, 2, 2]]]), torch.tensor([[[0, 1, 1, 255]]]))
    r = m.compute()
    table = format_table(r, title="demo")
    assert (
        "road" in table
        and "100.00" in table
        and " 50.00" in table
        and "n/a" not in table.split("mean")[0][:0]
    )
    pytest.importorskip("matplotlib")
    from rtseg.eval.metrics import save_plots

    paths = save_plots(r, tmp_path / "plots")
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)


def _ddp_worker(rank, world, init_file, parts, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    m = SegMetrics(4)
    p, t = parts[rank]
    if p is not None:  # rank 1 sees nothing: it must still take part in the collective
        m.update(p, t)
    m.all_reduce()
    torch.save(m.confusion, os.path.join(out_dir, f"conf{rank}.pt"))
    dist.destroy_process_group()


def test_all_reduce_sums_confusion_across_ranks(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 4, (3, 9, 9), generator=g)
    p = torch.randint(0, 4, (3, 9, 9), generator=g)
    full = SegMetrics(4)
    full.update(p, t)
    parts = [(p[:2], t[:2]), (None, None), (p[2:], t[2:])]
    mp.spawn(_ddp_worker, args=(3, str(tmp_path / "init"), parts, str(tmp_path)), nprocs=3, join=True)
    for r in range(3):
        assert torch.equal(torch.load(tmp_path / f"conf{r}.pt", weights_only=True), full.confusion)


# ---------------------------------------------------------------------------------------------
# Cityscapes parity with the official evalPixelLevelSemanticLabeling


def _write_fake_cityscapes(root: Path, n: int = 3, h: int = 48, w: int = 96, seed: int = 0):
    """Fake val split: random labelIds (incl. ignored ids), instance objects, crowd regions, and
    predictions (official: labelId PNGs; rtseg: trainId arrays, 255 where the official file holds
    an ignored id). Returns (official prediction files, gt label files, rtseg predictions)."""
    from PIL import Image

    from rtseg.data.cityscapes import cityscapes_meta

    meta = cityscapes_meta()
    rng = np.random.default_rng(seed)
    preds_official, gts, preds_train = [], [], []
    inst_label_ids = [24, 25, 26, 27, 28, 29, 30, 31, 32, 33]
    for i in range(n):
        city = ["aachen", "bonn"][i % 2]
        stem = f"{city}_{i:06d}_000019"
        lbl = rng.integers(0, 34, (h // 8, w // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        inst = lbl.astype(np.int32).copy()
        for k in range(12):  # instance objects (some of ignored classes caravan/trailer)
            lid = int(rng.choice(inst_label_ids))
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            hh, ww = rng.integers(3, 20), rng.integers(3, 30)
            lbl[y : y + hh, x : x + ww] = lid
            inst[y : y + hh, x : x + ww] = lid * 1000 + k
        lbl[0:4, 0:10] = 26  # a car "crowd" region without instance id
        inst[0:4, 0:10] = 26
        train = np.array([meta.label_to_train[v] for v in range(34)])[lbl]
        pred = np.where(rng.random((h, w)) < 0.6, train, rng.integers(0, 19, (h, w)))
        pred = np.where(pred == IGNORE_INDEX, rng.integers(0, 19, (h, w)), pred)
        void = rng.random((h, w)) < 0.05  # some predictions of ignored ids (unlabeled / ego vehicle)
        pred_label = np.where(void, rng.integers(0, 2, (h, w)), meta.train_to_label[np.minimum(pred, 18)])
        pred = np.where(void, IGNORE_INDEX, pred)
        gdir = root / "gtFine" / "val" / city
        idir = root / "leftImg8bit" / "val" / city
        pdir = root / "results"
        for d in (gdir, idir, pdir):
            d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lbl).save(gdir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(gdir / f"{stem}_gtFine_instanceIds.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            idir / f"{stem}_leftImg8bit.png"
        )
        Image.fromarray(pred_label.astype(np.uint8)).save(pdir / f"{stem}_pred.png")
        preds_official.append(str(pdir / f"{stem}_pred.png"))
        gts.append(str(gdir / f"{stem}_gtFine_labelIds.png"))
        preds_train.append(pred.astype(np.int64))
    return preds_official, gts, preds_train


def test_cityscapes_metrics_match_official_script(tmp_path, monkeypatch):
    pytest.importorskip("cityscapesscripts", reason="needs cityscapesscripts (pip install rtseg[cityscapes])")
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    from rtseg.data import build_dataset
    from rtseg.eval.metrics import CityscapesMetrics

    # cityscapesscripts 2.3 calls np.in1d, which numpy 2.4 removed; np.isin(...).ravel() is identical
    if not hasattr(np, "in1d"):
        monkeypatch.setattr(
            np, "in1d", lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel(), raising=False
        )
    for k, v in {
        "quiet": True,
        "JSONOutput": False,
        "evalInstLevelScore": True,
        "evalPixelAccuracy": False,
    }.items():
        monkeypatch.setattr(ev.args, k, v)

    preds_official, gts, preds_train = _write_fake_cityscapes(tmp_path)
    official = ev.evaluateImgLists(preds_official, gts, ev.args)

    ds = build_dataset("cityscapes", tmp_path, split="val")
    assert [str(f[1]) for f in ds.files] == sorted(gts)
    order = {g: i for i, g in enumerate(gts)}
    m = CityscapesMetrics()
    for i in range(len(ds)):
        _, label = ds[i]
        j = order[str(ds.files[i][1])]
        m.update(
            torch.from_numpy(preds_train[j])[None], torch.from_numpy(label)[None], ds.load_instances(i)[None]
        )
    r = m.compute()

    def close(a, b):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-4

    for name, v in r["per_class_iou"].items():
        assert close(v, official["classScores"][name]), (name, v, official["classScores"][name])
    for name, v in r["per_class_iiou"].items():
        assert close(v, official["classInstScores"][name]), (name, v, official["classInstScores"][name])
    assert set(r["per_class_iiou"]) == {
        n for n, s in official["classInstScores"].items() if not math.isnan(s)
    }
    for cat, v in r["per_category_iou"].items():
        assert close(v, official["categoryScores"][cat]), cat
    for cat, v in r["per_category_iiou"].items():
        assert close(v, official["categoryInstScores"][cat]), cat
    assert set(r["per_category_iiou"]) == {"human", "vehicle"}
    assert close(r["miou"], official["averageScoreClasses"])
    assert close(r["iiou"], official["averageScoreInstClasses"])
    assert close(r["category_iou"], official["averageScoreCategories"])
    assert close(r["category_iiou"], official["averageScoreInstCategories"])
    # the fake data must exercise iIoU weighting for real: instance and pixel scores differ
    assert any(abs(r["per_class_iiou"][n] - r["per_class_iou"][n]) > 1e-3 for n in r["per_class_iiou"])
    assert "category" in format_table(r)


# ---------------------------------------------------------------------------------------------
# evaluate()


class _EncodedLabels(SegDataset):
    """Images whose red channel encodes the label (id * 20, ignore -> 250): a perfect model exists."""

    name = "encoded"
    class_names = ("a", "b", "c", "d")
    palette = np.zeros((4, 3), np.uint8)

    def __init__(self, n=5, size=(37, 53)):
        self.n, self.size, self.split = n, size, "val"

    def __len__(self):
        return self.n

    def load(self, i):
        rng = np.random.default_rng(i)
        lbl = rng.integers(0, 4, self.size)
        lbl[rng.random(self.size) < 0.1] = IGNORE_INDEX
        img = np.zeros((*self.size, 3), np.uint8)
        img[..., 0] = np.where(lbl == IGNORE_INDEX, 250, lbl * 20)
        img[..., 1] = 7
        return img, lbl


class _Decoder(nn.Module):
    """Reads the label back from the red channel of float RGB in [0, 1]; ``shift`` makes it wrong."""

    def __init__(self, shift=0):
        super().__init__()
        self.shift = shift
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and x.shape[1] == 3
        assert torch.allclose(x[:, 1], torch.full_like(x[:, 1], 7 / 255)), "channel order must be RGB"
        ids = (x[:, 0] * 255 / 20).round().long().clamp(0, 3)
        ids = (ids + self.shift) % 4
        return nn.functional.one_hot(ids, 4).permute(0, 3, 1, 2).float() + 0 * self.dummy


def test_evaluate_perfect_model_gives_miou_one(tmp_path):
    from rtseg.eval.loop import evaluate

    out = tmp_path / "res.json"
    r = evaluate(_Decoder(), dataset=_EncodedLabels(), batch_size=2, json_out=out, progress=False)
    assert r["miou"] == 1.0 and r["pixel_acc"] == 1.0 and r["mean_class_acc"] == 1.0
    saved = json.loads(out.read_text())
    assert saved["miou"] == 1.0 and saved["num_images"] == 5 and saved["dataset"] == "encoded"
    wrong = evaluate(_Decoder(shift=1), dataset=_EncodedLabels(), batch_size=3, progress=False)
    assert wrong["miou"] == 0.0 and wrong["pixel_acc"] == 0.0


def test_evaluate_constant_model_on_camvid(shared_dir):
    """Real CamVid val labels: a model that always says Road scores road_fraction as IoU and accuracy."""
    from rtseg.data import build_dataset, class_frequencies
    from rtseg.eval.loop import evaluate

    root = shared_dir / "data" / "camvid"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")

    class Road(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 11, *x.shape[-2:])
            out[:, 3] = 1
            return out

    ds = build_dataset("camvid", root, split="val")
    r = evaluate(Road(), dataset=ds, batch_size=4, max_images=12, progress=False)
    sub = [ds[i][1] for i in range(12)]
    counts = np.bincount(np.concatenate([s[s != IGNORE_INDEX] for s in sub]), minlength=11)
    frac = counts[3] / counts.sum()
    assert r["num_images"] == 12 and r["num_pixels"] == counts.sum()
    assert r["pixel_acc"] == pytest.approx(frac)
    assert r["per_class_iou"]["Road"] == pytest.approx(frac)
    present = counts > 0
    assert r["miou"] == pytest.approx(frac / present.sum())
    assert class_frequencies(ds).sum() > counts.sum()
