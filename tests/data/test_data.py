"""Datasets: layouts, id mapping, bad data errors, decode cache, synthetic generator, class frequencies."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtseg.data import IGNORE_INDEX, build_dataset, class_frequencies, list_datasets
from rtseg.data.synthetic import SyntheticStreet


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RTSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RTSEG_DATA", raising=False)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _fake_camvid(root: Path, n: int = 3, txt: bool = True, h: int = 12, w: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        lines = []
        for i in range(n):
            _png(root / split / f"f{i}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            _png(root / f"{split}annot" / f"f{i}.png", rng.integers(0, 12, (h, w)).astype(np.uint8))
            lines.append(f"/SegNet/CamVid/{split}/f{i}.png /SegNet/CamVid/{split}annot/f{i}.png")
        if txt:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# CamVid


def test_camvid_real_data(shared_dir):
    root = shared_dir / "data" / "camvid"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    train, val = build_dataset("camvid", root, "train"), build_dataset("camvid", root, "val")
    assert (len(train), len(val)) == (367, 101)
    assert len(build_dataset("camvid", root, "trainval")) == 468
    assert train.num_classes == 11 and train.palette.shape == (11, 3) and train.class_names[3] == "Road"
    for ds in (train, val):
        img, lbl = ds[-1]
        assert img.shape == (360, 480, 3) and img.dtype == np.uint8
        assert lbl.shape == (360, 480) and lbl.dtype == np.int64
        assert set(np.unique(lbl).tolist()) <= set(range(11)) | {IGNORE_INDEX}
    assert (train[0][1] == IGNORE_INDEX).any()  # Unlabelled (11) became the ignore index
    with pytest.raises(FileNotFoundError, match="test.txt"):
        build_dataset("camvid", root, "test")


def test_camvid_txt_and_listing_agree(tmp_path):
    a = build_dataset("camvid", _fake_camvid(tmp_path / "a"), "val")
    b = build_dataset("camvid", _fake_camvid(tmp_path / "b", txt=False), "val")
    assert len(a) == len(b) == 3
    for i in range(3):
        raw = np.asarray(Image.open(a.files[i][1]))
        img, lbl = a[i]
        np.testing.assert_array_equal(lbl, np.where(raw == 11, IGNORE_INDEX, raw))
        np.testing.assert_array_equal(img, b[i][0])
        np.testing.assert_array_equal(lbl, b[i][1])


@pytest.mark.parametrize("cache", ["memory", "disk", True])
def test_decode_cache_returns_identical_samples(tmp_path, cache):
    root = _fake_camvid(tmp_path / "cv")
    plain = build_dataset("camvid", root, "train")
    cached = build_dataset("camvid", root, "train", cache=cache).preload()
    for i in range(len(plain)):
        for _ in range(2):  # second read comes from the cache
            img, lbl = cached[i]
            np.testing.assert_array_equal(img, plain[i][0])
            np.testing.assert_array_equal(lbl, plain[i][1])
            assert lbl.dtype == np.int64 and img.flags.writeable
            img[:] = 0  # callers may augment in place without corrupting the cache
    if cache == "disk":
        assert len(list((tmp_path / "cache" / "decoded").rglob("*.npy"))) == 2 * len(plain)
    with pytest.raises(ValueError, match="cache"):
        build_dataset("camvid", root, "train", cache="ssd")


def test_camvid_bad_data_names_the_file(tmp_path):
    root = _fake_camvid(tmp_path / "cv")
    bad = root / "trainannot" / "f1.png"
    _png(bad, np.full((12, 16), 13, np.uint8))  # id 13: neither a class nor Unlabelled
    ds = build_dataset("camvid", root, "train")
    with pytest.raises(ValueError, match=r"f1\.png.*\[13\]"):
        ds[1]
    _png(bad, np.zeros((10, 16), np.uint8))  # size mismatch
    with pytest.raises(ValueError, match=r"trainannot/f1\.png.*differs"):
        ds[1]
    (root / "train" / "f2.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"train/f2\.png: unreadable"):
        ds[2]
    _png(bad, np.zeros((12, 16, 3), np.uint8))  # an RGB label is not an id map
    with pytest.raises(ValueError, match=r"f1\.png.*mode 'RGB'"):
        ds[1]
    (root / "valannot" / "f0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"valannot/f0\.png"):
        build_dataset("camvid", root, "val")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("camvid", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "trainannot").mkdir()
    with pytest.raises(ValueError, match="empty"):
        build_dataset("camvid", empty, "train")
    with pytest.raises(IndexError):
        ds[3]


# ---------------------------------------------------------------------------------------------
# Cityscapes, SUN RGB-D, folder


def _fake_cityscapes(root: Path, label: np.ndarray, inst: np.ndarray | None = None) -> Path:
    h, w = label.shape
    stem = "aachen_000000_000019"
    _png(root / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", np.zeros((h, w, 3), np.uint8))
    _png(root / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelIds.png", label.astype(np.uint8))
    if inst is not None:
        _png(root / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_instanceIds.png", inst.astype(np.uint16))
    return root


def test_cityscapes_trainids_from_official_table(tmp_path):
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    inst = ids.astype(np.int32)
    inst[0, 0] = 26 * 1000 + 3
    ds = build_dataset("cityscapes", _fake_cityscapes(tmp_path / "cs", ids, inst), "val")
    assert ds.num_classes == 19 and ds.class_names[13] == "car" and tuple(ds.palette[0]) == (128, 64, 128)
    _, lbl = ds[0]
    expect = [labels.id2label[i].trainId for i in range(34)]
    expect = [255 if t in (255, -1) else t for t in expect]
    assert lbl.ravel().tolist() == expect
    got = ds.load_instances(0)
    assert got.dtype == np.int32 and got[0, 0] == 26003
    _fake_cityscapes(tmp_path / "cs", np.full((2, 17), 40, np.uint8))
    with pytest.raises(ValueError, match=r"labelIds\.png.*\[40\]"):
        ds[0]


def test_cityscapes_without_cityscapesscripts_has_install_hint(tmp_path, monkeypatch):
    from rtseg.data import cityscapes

    cityscapes.cityscapes_meta.cache_clear()
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers", None)
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)
    try:
        with pytest.raises(ImportError, match=r"pip install rtseg\[cityscapes\]"):
            build_dataset("cityscapes", tmp_path, "val")
    finally:
        cityscapes.cityscapes_meta.cache_clear()


def test_sunrgbd_layout_and_void(tmp_path):
    root = tmp_path / "sun"
    raw = np.arange(38, dtype=np.uint8).reshape(2, 19)
    _png(root / "image" / "test" / "img-000001.jpg", np.zeros((2, 19, 3), np.uint8))
    _png(root / "label37" / "test" / "img-000001.png", raw)
    ds = build_dataset("sunrgbd", root, "test")
    assert ds.num_classes == 37 and ds.palette.shape == (37, 3) and len(np.unique(ds.palette, axis=0)) == 37
    lbl = ds[0][1].ravel()
    assert lbl[0] == IGNORE_INDEX and lbl[1:].tolist() == list(range(37))
    assert len(build_dataset("sunrgbd", root, "val")) == 1  # val = the test split
    _png(root / "label37" / "test" / "img-000001.png", np.full((2, 19), 38, np.uint8))
    with pytest.raises(ValueError, match=r"img-000001\.png.*\[38\]"):
        ds[0]
    with pytest.raises(FileNotFoundError, match=r"image/train"):
        build_dataset("sunrgbd", root, "train")


def test_folder_index_masks_with_void_class(tmp_path):
    root = tmp_path / "f"
    (root).mkdir()
    (root / "classes.txt").write_text("# name R G B\nroad 128 64 128\nvoid 0 0 0\ncar 0 0 142\n")
    _png(root / "images" / "a.jpg", np.zeros((3, 4, 3), np.uint8))
    mask = np.array([[0, 1, 2, 255]] * 3, np.uint8)
    im = Image.fromarray(mask, mode="L").convert("P")  # palette PNG: the indices count, not colours
    (root / "masks").mkdir()
    im.save(root / "masks" / "a.png")
    ds = build_dataset("folder", root, split=None)
    assert ds.class_names == ("road", "car") and ds.palette.tolist() == [[128, 64, 128], [0, 0, 142]]
    assert ds[0][1][0].tolist() == [0, IGNORE_INDEX, 1, IGNORE_INDEX]
    _png(root / "masks" / "a.png", np.full((3, 4), 3, np.uint8))
    with pytest.raises(ValueError, match=r"masks/a\.png.*\[3\]"):
        ds[0]


def test_folder_color_masks_and_splits(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    classes = [{"name": "sky", "color": [70, 130, 180]}, {"name": "road", "color": [128, 64, 128]},
               {"name": "unlabelled", "color": [0, 0, 0]}]  # fmt: skip
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    rgb = np.array([[[70, 130, 180], [128, 64, 128], [0, 0, 0]]], np.uint8)
    for stem in ("x", "y"):
        _png(root / "images" / f"{stem}.png", np.zeros((1, 3, 3), np.uint8))
        _png(root / "masks" / f"{stem}.png", rgb)
    (root / "val.txt").write_text("y\n")
    ds = build_dataset("folder", root, split="all")
    assert len(ds) == 2 and ds[0][1].tolist() == [[0, 1, IGNORE_INDEX]]
    val = build_dataset("folder", root, split="val")
    assert len(val) == 1 and val.files[0][0].stem == "y"
    _png(root / "masks" / "x.png", np.array([[[70, 130, 180], [1, 2, 3], [0, 0, 0]]], np.uint8))
    with pytest.raises(ValueError, match=r"masks/x\.png: colours \[\(1, 2, 3\)\]"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="train"):
        build_dataset("folder", root, split="train")
    (root / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="class list"):
        build_dataset("folder", root, split="all")


# ---------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_is_deterministic_per_seed_split_and_index():
    a, b = SyntheticStreet(length=10), SyntheticStreet(length=10)
    for i in (0, 7):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    # order of access does not matter (DataLoader workers read arbitrary indices)
    np.testing.assert_array_equal(SyntheticStreet(length=10)[7][0], a[7][0])
    assert not np.array_equal(a[0][0], a[1][0])
    assert not np.array_equal(a[0][0], SyntheticStreet(seed=1, length=10)[0][0])
    assert not np.array_equal(a[0][0], SyntheticStreet(split="val", length=10)[0][0])


def test_synthetic_content_and_size():
    ds = build_dataset("synthetic", split="train", size=(96, 128), length=40)
    assert len(ds) == 40 and ds.num_classes == 7 and ds.class_names[3] == "road"
    counts = np.zeros(256, np.int64)
    for i in range(len(ds)):
        img, lbl = ds[i]
        assert img.shape == (96, 128, 3) and img.dtype == np.uint8 and lbl.dtype == np.int64
        counts += np.bincount(lbl.ravel(), minlength=256)
    assert (counts[:7] > 0).all(), "every class appears"
    assert counts[7:255].sum() == 0 and counts[IGNORE_INDEX] > 0  # void regions are ignored
    assert SyntheticStreet(void=False, length=5)[0][1].max() < 7
    with pytest.raises(ValueError):
        SyntheticStreet(size=(4, 4))


def test_synthetic_is_fast():
    ds = SyntheticStreet(length=30)  # 360 x 480
    ds[0]
    times = []
    for i in range(1, 30):
        t = time.process_time()  # CPU time: robust to other jobs sharing the machine
        ds[i]
        times.append(time.process_time() - t)
    assert np.median(times) < 0.010, f"median {1e3 * np.median(times):.1f} ms per sample"


# ---------------------------------------------------------------------------------------------
# registry and class frequencies


def test_build_dataset_names_and_errors(tmp_path, monkeypatch):
    assert list_datasets() == ["camvid", "cityscapes", "folder", "sunrgbd", "synthetic"]
    with pytest.raises(KeyError, match="did you mean camvid"):
        build_dataset("camvd")
    with pytest.raises(ValueError, match="root"):
        build_dataset("camvid")
    _fake_camvid(tmp_path / "camvid")
    monkeypatch.setenv("RTSEG_DATA", str(tmp_path))
    assert len(build_dataset("CamVid", split="val")) == 3


def test_class_frequencies_counts_and_caches(tmp_path):
    root = _fake_camvid(tmp_path / "cv")
    ds = build_dataset("camvid", root, "train")
    manual = np.zeros(11, np.int64)
    for i in range(len(ds)):
        lbl = ds[i][1]
        manual += np.bincount(lbl[lbl != IGNORE_INDEX], minlength=11)
    counts = class_frequencies(ds)
    np.testing.assert_array_equal(counts, manual)
    files = list((tmp_path / "cache" / "class_freq").glob("camvid-train-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["counts"] == manual.tolist()

    def boom(i):
        raise AssertionError("cached counts must not re-read the data")

    ds.load = boom
    np.testing.assert_array_equal(class_frequencies(ds), manual)
    # a different file list is a different cache entry
    (root / "train.txt").write_text((root / "train.txt").read_text().splitlines()[0] + "\n")
    small = build_dataset("camvid", root, "train")
    assert class_frequencies(small).sum() < manual.sum()
    assert len(list((tmp_path / "cache" / "class_freq").glob("*.json"))) == 2
    syn = SyntheticStreet(size=(32, 48), length=4)
    assert class_frequencies(syn).sum() == (np.stack([syn[i][1] for i in range(4)]) != IGNORE_INDEX).sum()
