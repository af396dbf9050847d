"""SegResult: labels, scores from logits, per-class shares, overlay with legend, atomic saves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rtseg.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
from rtseg.eval.result import SegResult
from rtseg.eval.visualize import add_legend


def _result(logits: bool = True, image: bool = True) -> SegResult:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 20, 30)).astype(np.float32)
    labels = z.argmax(0).astype(np.uint8)
    labels[:5] = 0  # a band of sky
    labels[0, 0] = 255  # one ignored pixel
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    return SegResult(labels, SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, image=img if image else None,
                     logits=z if logits else None)


def test_shares_scores_and_present() -> None:
    r = _result()
    sh = r.shares()
    assert list(sh) == list(SYNTHETIC_CLASSES) and abs(sum(sh.values()) - 1) < 1e-9
    valid = r.labels[r.labels != 255]
    assert sh["sky"] == pytest.approx((valid == 0).mean())
    assert sum(r.shares(percent=True).values()) == pytest.approx(100)
    assert next(iter(r.shares(sort=True))) == "sky" and r.present()[0] == 0
    s = r.scores
    assert s.shape == (7, 20, 30) and np.allclose(s.sum(0), 1, atol=1e-5)
    assert r.confidence.shape == (20, 30) and (r.confidence <= 1).all()
    assert "sky" in repr(r)
    with pytest.raises(ValueError, match="logits"):
        _ = _result(logits=False).scores


def test_overlay_alpha_and_legend() -> None:
    r = _result()
    np.testing.assert_array_equal(r.overlay(0.0), r.image)  # alpha 0: the image itself
    full = r.overlay(1.0)
    assert (full[10, 10] == SYNTHETIC_PALETTE[r.labels[10, 10]]).all()
    leg = r.overlay(0.5, legend=True)
    assert leg.shape[1] == 30 and leg.shape[0] > 20  # a legend band below the image
    with pytest.raises(ValueError, match="image"):
        _result(image=False).overlay()
    with pytest.raises(ValueError, match="alpha"):
        r.overlay(1.5)
    wide = add_legend(np.zeros((10, 400, 3), np.uint8), SYNTHETIC_CLASSES, SYNTHETIC_PALETTE)
    assert wide.shape[0] > 10 and (wide[10:] == 255).any()
    # each legend entry draws its class colour
    flat = wide[10:].reshape(-1, 3)
    for c in SYNTHETIC_PALETTE:
        assert (flat == c).all(axis=1).any()


def test_save_kinds_are_atomic_and_readable(tmp_path) -> None:
    r = _result()
    p = r.save(tmp_path / "o.png")  # overlay with legend (image known)
    assert np.asarray(Image.open(p)).shape[1] == 30
    q = r.save(tmp_path / "l.png", kind="labels")
    np.testing.assert_array_equal(np.asarray(Image.open(q)), r.labels)  # indexed PNG keeps the ids
    np.testing.assert_array_equal(np.load(r.save(tmp_path / "l.npy")), r.labels)
    assert Image.open(r.save(tmp_path / "c.jpg", kind="color", legend=False)).size == (30, 20)
    assert _result(image=False).save(tmp_path / "x.png") == tmp_path / "x.png"  # labels by default
    with pytest.raises(ValueError, match="kind"):
        r.save(tmp_path / "y.png", kind="heat")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c.jpg", "l.npy", "l.png", "o.png", "x.png"]


def test_shape_checks() -> None:
    with pytest.raises(ValueError, match="H x W"):
        SegResult(np.zeros((2, 3, 4)), ["a"], SYNTHETIC_PALETTE)
    with pytest.raises(ValueError, match="does not match"):
        SegResult(np.zeros((4, 4), np.uint8), SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, image=np.zeros((5, 4, 3)))
    with pytest.raises(ValueError, match="logits"):
        SegResult(np.zeros((4, 4), np.uint8), SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, logits=np.zeros((3, 4, 4)))
