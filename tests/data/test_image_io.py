"""data.io: every PNG/JPEG mode decodes to the right RGB, or is refused with the file and mode named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtseg.data.io import read_image, read_label

RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [40, 80, 120]]], np.uint8)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_sixteen_bit_gray_is_scaled_not_white(tmp_path: Path) -> None:
    a16 = np.array([[0, 257 * 10], [65535, 257 * 128]], np.uint16)
    p = _save(Image.fromarray(a16), tmp_path / "g16.png")
    assert Image.open(p).mode in ("I;16", "I")  # the mode that was read as all-white before
    out = read_image(p)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 10], [255, 128]] and (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("mode", ["L", "P", "P+tRNS", "LA", "RGBA", "1", "CMYK", "YCbCr", "I"])
def test_every_common_mode_matches_pillows_rgb(mode: str, tmp_path: Path) -> None:
    base = Image.fromarray(RGB)
    img = base.convert(mode.split("+")[0])
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else ("TIFF" if mode == "I" else "PNG")
    kw = {"transparency": 0} if mode == "P+tRNS" else {}
    p = _save(img, tmp_path / f"x.{fmt.lower()}", format=fmt, **kw)
    out = read_image(p)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    ref = Image.open(p)
    if ref.mode == "I":  # 8-bit values stored as 32-bit ints: scaled as 16-bit, so 255 -> 1
        assert out[..., 0].max() <= 1
    else:
        assert np.array_equal(out, np.asarray(ref.convert("RGB")))


def test_float_and_out_of_range_images_are_refused_naming_file_and_mode(tmp_path: Path) -> None:
    p = _save(Image.fromarray(np.full((2, 2), 0.5, np.float32)), tmp_path / "f.tiff")
    with pytest.raises(ValueError, match=r"f\.tiff: image mode 'F' is not supported"):
        read_image(p)
    p = _save(Image.fromarray(np.full((2, 2), 70000, np.int32)), tmp_path / "i32.tiff")
    with pytest.raises(ValueError, match=r"i32\.tiff: image mode 'I' with values 70000\.\.70000"):
        read_image(p)


def test_truncated_empty_and_missing_files_name_the_file(tmp_path: Path) -> None:
    good = _save(Image.fromarray(np.zeros((64, 64, 3), np.uint8)), tmp_path / "g.png")
    torn = tmp_path / "torn.png"
    torn.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("torn.png", "empty.jpg"):
        with pytest.raises(ValueError, match=rf"{name}: unreadable image file"):
            read_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"nope\.png: no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="not a file"):
        read_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch) -> None:
    p = _save(Image.fromarray(np.zeros((64, 64, 3), np.uint8)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"big\.png: image too large"):
        read_image(p)


def test_labels_keep_ids_for_16_bit_palette_and_la(tmp_path: Path) -> None:
    ids = np.array([[0, 3], [11, 255]], np.uint8)
    pal = Image.fromarray(ids, "L").convert("P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    assert read_label(_save(pal, tmp_path / "p.png")).tolist() == ids.tolist()
    assert read_label(_save(Image.fromarray(ids.astype(np.uint16)), tmp_path / "l16.png")).tolist() == ids.tolist()
    la = Image.merge("LA", [Image.fromarray(ids), Image.fromarray(np.full_like(ids, 9))])
    assert read_label(_save(la, tmp_path / "la.png")).tolist() == ids.tolist()
    with pytest.raises(ValueError, match=r"rgb\.png: label image has mode 'RGB'"):
        read_label(_save(Image.fromarray(RGB), tmp_path / "rgb.png"))


def test_file_objects_decode_like_files_and_errors_use_the_given_name(tmp_path: Path) -> None:
    import io

    p = _save(Image.fromarray(RGB), tmp_path / "x.png")
    assert np.array_equal(read_image(io.BytesIO(p.read_bytes())), read_image(p))
    with pytest.raises(ValueError, match=r"upload\.png: unreadable image file"):
        read_image(io.BytesIO(b"junk"), name="upload.png")
