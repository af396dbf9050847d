"""Overlays: the uint8 table path is the float32 blend, bit for bit; ignored pixels keep the image."""

import numpy as np
import pytest

from rtseg.eval.visualize import colorize, overlay

PALETTE = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [255, 69, 0], [0, 0, 192]], np.uint8)


def _float_blend(image, labels, alpha, ignore=255):
    col = colorize(labels, PALETTE, ignore).astype(np.float32)
    out = image.astype(np.float32)
    out = np.where((labels != ignore)[..., None], (1 - alpha) * out + alpha * col, out)
    return out.round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.77, 1.0])
def test_overlay_equals_the_float_blend(alpha):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (37, 53)).astype(np.uint8)
    labels[:4, :6] = 255  # ignored: untouched
    got = overlay(image, labels, PALETTE, alpha)
    assert got.dtype == np.uint8 and np.array_equal(got, _float_blend(image, labels, alpha))
    assert np.array_equal(got[:4, :6], image[:4, :6])
    # a float image takes the float path and gives the same result
    assert np.array_equal(overlay(image.astype(np.float32), labels, PALETTE, alpha), got)
