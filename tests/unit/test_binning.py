"""Binning of preview slices: block means rounded half to even, in the input's type."""
from __future__ import annotations

import numpy as np
import pytest

from gateway.imaging.jpeg2000 import bin_pixels


def reference(pixels: np.ndarray, factor: int) -> np.ndarray:
    rows, columns = pixels.shape[0] // factor * factor, pixels.shape[1] // factor * factor
    blocks = pixels[:rows, :columns].astype(np.float64).reshape(
        rows // factor, factor, columns // factor, factor, *pixels.shape[2:])
    return np.round(blocks.mean(axis=(1, 3))).astype(pixels.dtype)  # np.round: halves to even


rng = np.random.default_rng(11)
CASES = {
    "uint16": rng.integers(0, 65536, (67, 45), dtype=np.uint16),
    "int16": rng.integers(-32768, 32768, (64, 64), dtype=np.int16),
    "uint16 all max": np.full((8, 8), 65535, np.uint16),
    "int16 all min": np.full((8, 8), -32768, np.int16),
    "small negatives (halves)": rng.integers(-3, 4, (64, 64)).astype(np.int16),
    "rgb uint8": rng.integers(0, 256, (33, 30, 3), dtype=np.uint8),
    "int32": rng.integers(-2**31, 2**31, (16, 16), dtype=np.int32),
}


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("name", list(CASES))
def test_block_means_round_half_to_even(name, factor):
    pixels = CASES[name]
    binned = bin_pixels(pixels, factor)
    assert binned.dtype == pixels.dtype
    assert np.array_equal(binned, reference(pixels, factor))


def test_every_half_rounds_to_even():
    sums = np.arange(-64, 64, dtype=np.int16)  # 2 × 2 blocks of (s, 0, 0, 0): means s / 4
    pixels = np.zeros((2, 2 * sums.size), np.int16)
    pixels[0, 0::2] = sums
    assert np.array_equal(bin_pixels(pixels, 2)[0], np.round(sums / 4).astype(np.int16))


def test_too_small_to_bin_is_refused():
    with pytest.raises(ValueError, match="3×3 cannot be binned by 4"):
        bin_pixels(np.zeros((3, 3), np.uint16), 4)
