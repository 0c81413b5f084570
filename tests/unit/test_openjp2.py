"""The preview encoder (OpenJPEG's C API from memory): what glymur wrote, byte for byte, and
every OpenJPEG failure as an exception."""
from __future__ import annotations

import glymur
import numpy as np
import openjpeg
import pytest

from gateway.imaging import jpeg2000, openjp2
from gateway.imaging.openjp2 import OpenJpegError, encode_j2k


def ramp(rows: int, columns: int, dtype=np.uint16, top: int = 4095) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns]
    return ((x * 7 + y * 13) % (top + 1) + (x * y) % 97).clip(0, top).astype(dtype)


def glymur_codestream(samples: np.ndarray, tmp_path, **options) -> bytes:
    path = tmp_path / "glymur.j2k"
    glymur.set_option("lib.num_threads", 0)
    glymur.Jp2k(str(path), data=samples, **options)
    return path.read_bytes()


@pytest.mark.parametrize("ratio", [10.0, None])
def test_the_same_codestream_as_glymurs_file_writer(tmp_path, ratio):
    samples = ramp(256, 256)
    options = {"cratios": [ratio]} if ratio else {}
    assert jpeg2000.encode(samples, ratio=ratio) == glymur_codestream(samples, tmp_path, numres=6, **options)


def test_lossy_ratio_10_is_a_tenth_of_16_bit_samples_and_decodes_close(tmp_path):
    samples = ramp(256, 256)
    codestream = jpeg2000.encode(samples, ratio=10)
    assert codestream[:2] == b"\xff\x4f" and codestream[-2:] == b"\xff\xd9"
    assert abs(len(codestream) - samples.size * 2 / 10) < 200
    path = tmp_path / "s.j2k"
    path.write_bytes(codestream)
    for decoded in (glymur.Jp2k(str(path))[:], openjpeg.decode(codestream)):
        assert decoded.shape == samples.shape
        assert np.abs(decoded.astype(np.int64) - samples).mean() < 20


@pytest.mark.parametrize("samples", [ramp(100, 37), ramp(64, 64, np.uint8, 255),
                                     np.stack([ramp(40, 50, np.uint8, 255)] * 3, axis=-1)[:, :, ::-1].copy(),
                                     ramp(1, 9)], ids=["16-bit odd size", "8-bit", "rgb", "one row"])
def test_lossless_is_exact(samples):
    decoded = openjpeg.decode(jpeg2000.encode(samples, ratio=None))
    assert decoded.dtype == samples.dtype
    assert np.array_equal(decoded, samples)


def test_threads_encode_the_same_codestream():
    samples = ramp(256, 256)
    assert encode_j2k(samples, ratio=10, resolutions=6, threads=2) == encode_j2k(samples, ratio=10, resolutions=6)


def test_samples_it_cannot_take_are_refused_by_name():
    with pytest.raises(OpenJpegError, match="int32"):
        encode_j2k(np.zeros((8, 8), np.int32), ratio=10, resolutions=3)
    with pytest.raises(OpenJpegError, match=r"\(8, 8, 2\)"):
        encode_j2k(np.zeros((8, 8, 2), np.uint8), ratio=10, resolutions=3)
    with pytest.raises(OpenJpegError, match=r"\(0, 8, 1\)"):
        encode_j2k(np.zeros((0, 8), np.uint16), ratio=10, resolutions=3)


def test_an_openjpeg_refusal_is_an_exception_with_its_message():
    # 8 × 8 pixels cannot have 6 resolution levels: OpenJPEG says so and fails.
    with pytest.raises(OpenJpegError, match="opj_.* failed: .*resolution"):
        encode_j2k(ramp(8, 8), ratio=10, resolutions=6)


@pytest.mark.timeout(60)  # OpenJPEG retries a write that answers 0 for ever
def test_a_failing_write_is_an_exception_not_an_empty_codestream(monkeypatch):
    def out_of_memory(*args):
        raise MemoryError("no room")

    monkeypatch.setattr(openjp2.ctypes, "string_at", out_of_memory)
    with pytest.raises(OpenJpegError, match="opj_.* failed: .*no room"):
        encode_j2k(ramp(64, 64), ratio=10, resolutions=6)
