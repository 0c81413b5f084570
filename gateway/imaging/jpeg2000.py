"""JPEG 2000 codestreams of preview slices: binning, encoding (the system's OpenJPEG, Debian's
``libopenjp2-7``, as glymur finds it, driven from memory by :mod:`gateway.imaging.openjp2`),
decoding.

Samples are unsigned 8 or 16 bit: signed data is shifted by 2**15 (the preview's geometry
says so); the compression ratio is relative to 16-bit samples whatever the bits stored.
"""
from __future__ import annotations

import numpy as np

SIGNED_SHIFT = 32768


def bin_pixels(pixels: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` × ``factor`` block (rows and columns beyond the last whole
    block are dropped), rounded to the nearest integer (halves to even), in the input's integer
    type (colour: per sample)."""
    if factor == 1:
        return pixels
    rows, columns = pixels.shape[0] // factor * factor, pixels.shape[1] // factor * factor
    if rows == 0 or columns == 0:
        raise ValueError(f"an image of {pixels.shape[0]}×{pixels.shape[1]} cannot be binned by {factor}")
    # The sum of factor² strided views: one pass of vectorised adds, much faster than a mean
    # over the axes of a reshaped array.
    blocks = factor * factor
    narrow = pixels.dtype.kind in "iu" and pixels.dtype.itemsize <= 2 and blocks <= 256  # sums fit 32 bits
    total = np.zeros((rows // factor, columns // factor, *pixels.shape[2:]), dtype=np.int32 if narrow else np.int64)
    for dy in range(factor):
        for dx in range(factor):
            total += pixels[dy:rows:factor, dx:columns:factor]
    if narrow and blocks & (blocks - 1) == 0:
        # A power of two: (sum + blocks/2 − 1 + the quotient's last bit) >> log2(blocks) rounds
        # halves to even in integers, in place (4× the float division and rint).
        shift = blocks.bit_length() - 1
        odd = total >> shift
        odd &= 1
        total += odd
        total += blocks // 2 - 1
        total >>= shift
        return total.astype(pixels.dtype)
    return np.rint(total / blocks).astype(pixels.dtype)


def to_codec_samples(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Unsigned samples for the codec and the offset that restores the stored values
    (stored = decoded + offset)."""
    if pixels.dtype == np.uint8 or pixels.dtype == np.uint16:
        return pixels, 0
    if pixels.dtype.kind == "i" and pixels.dtype.itemsize <= 2:
        return (pixels.astype(np.int32) + SIGNED_SHIFT).astype(np.uint16), -SIGNED_SHIFT
    if pixels.dtype.kind in "ui" and pixels.size and 0 <= int(pixels.min()) and int(pixels.max()) <= 65535:
        return pixels.astype(np.uint16), 0
    raise ValueError(f"pixels of type {pixels.dtype} do not fit 16-bit JPEG 2000 samples")


def load_encoder() -> None:
    """Load OpenJPEG (through glymur: ≈ 40 ms, more on a busy machine) now rather than inside
    the first slice's encode, where every thread of a previews run would wait for it."""
    from gateway.imaging import openjp2  # noqa: F401


def encode(samples: np.ndarray, *, ratio: float | None) -> bytes:
    """A raw J2K codestream of unsigned 8/16-bit samples (2-D, or rows × columns × 3);
    ``ratio`` None or 1: lossless. Raises :class:`~gateway.imaging.openjp2.OpenJpegError`
    when OpenJPEG fails."""
    from gateway.imaging import openjp2  # loads the system OpenJPEG; only the processes that encode need it

    # OpenJPEG refuses more resolution levels than the image's smaller edge allows.
    smaller = min(samples.shape[0], samples.shape[1])
    return openjp2.encode_j2k(samples, ratio=ratio, resolutions=max(1, min(6, smaller.bit_length())))


def decode(codestream: bytes) -> np.ndarray:
    """The samples of a J2K codestream (pylibjpeg-openjpeg decodes from memory)."""
    import openjpeg

    return openjpeg.decode(codestream)
