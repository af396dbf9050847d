"""as_rgb_arrays: every input kind a predictor takes -> H x W x 3 uint8 RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rtseg.data.inputs import as_rgb_arrays, is_single


def test_paths_pil_arrays_and_lists(tmp_path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (one,) = as_rgb_arrays(str(tmp_path / "a.png"))
    np.testing.assert_array_equal(one, rgb)
    np.testing.assert_array_equal(as_rgb_arrays(tmp_path / "a.png")[0], rgb)
    np.testing.assert_array_equal(as_rgb_arrays(Image.fromarray(rgb))[0], rgb)
    rgba = np.concatenate([rgb, np.full((12, 16, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(as_rgb_arrays(Image.fromarray(rgba))[0], rgb)  # alpha dropped
    np.testing.assert_array_equal(as_rgb_arrays(rgba)[0], rgb)
    grey = as_rgb_arrays(Image.fromarray(rgb[..., 0]))[0]
    assert grey.shape == (12, 16, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert as_rgb_arrays(rgb[..., 0])[0].shape == (12, 16, 3)
    f = as_rgb_arrays(rgb.astype(np.float32) / 255)[0]
    np.testing.assert_array_equal(f, rgb)
    many = as_rgb_arrays([str(tmp_path / "a.png"), Image.fromarray(rgb), rgb])
    assert len(many) == 3 and all(m.dtype == np.uint8 and m.shape == (12, 16, 3) for m in many)
    batch = as_rgb_arrays(np.stack([rgb, rgb]))
    assert len(batch) == 2
    assert is_single(rgb) and is_single("a.png") and is_single(Image.fromarray(rgb))
    assert not is_single([rgb]) and not is_single(np.stack([rgb, rgb]))


@pytest.mark.parametrize("bad, err, match", [
    (np.zeros((4, 4, 3), np.float32) + 2.0, ValueError, r"\[0, 1\]"),
    (np.zeros((4, 4, 2), np.uint8), ValueError, "H x W x 3"),
    (np.full((4, 4, 3), 300, np.int32), ValueError, "0-255"),
    (np.full((4, 4, 3), np.nan, np.float32), ValueError, "NaN"),
    (3.5, TypeError, "image path"),
    ([], ValueError, "empty"),
])
def test_bad_inputs_name_the_problem(bad, err, match) -> None:
    with pytest.raises(err, match=match):
        as_rgb_arrays(bad)


def test_missing_file_names_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        as_rgb_arrays([np.zeros((4, 4, 3), np.uint8), tmp_path / "nope.png"])
