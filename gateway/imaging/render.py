"""Rendered frames and thumbnails for WADO-RS (PS3.18 8.3.5, 9.5).

:func:`render_frame` turns one decoded frame (as returned by
:func:`gateway.imaging.pixeldata.decode_frame`) into an 8-bit consumer image:
Modality LUT, VOI windowing, MONOCHROME1 inversion, palette/colour handling,
viewport scaling, then JPEG/PNG/GIF encoding.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
)

from gateway.imaging.pixeldata import PixelDataError

logger = logging.getLogger(__name__)

__all__ = [
    "RENDERED_MEDIA_TYPES",
    "WINDOW_FUNCTIONS",
    "parse_viewport",
    "parse_window",
    "parse_window_function",
    "render_frame",
]

# Media type -> Pillow format name
RENDERED_MEDIA_TYPES: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
}
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
# (0028,1056) VOI LUT Function values -> PS3.18 window function names
_HEADER_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
DEFAULT_QUALITY = 90


def _parse_window_parts(value: str) -> tuple[float, float, str]:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError(
            f"window must be 'center,width,function', got {value!r}"
        )
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(
            f"window center and width must be numbers, got {value!r}"
        ) from None
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ValueError(f"window center and width must be finite, got {value!r}")
    if width <= 0:
        raise ValueError(f"window width must be greater than 0, got {parts[1]!r}")
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise ValueError(
            f"window function {parts[2]!r} is not one of {', '.join(WINDOW_FUNCTIONS)}"
        )
    return center, width, function


def parse_window(value: str) -> tuple[float, float]:
    """(center, width) of a PS3.18 ``window=center,width,function`` value.

    The function part is validated here and returned by
    :func:`parse_window_function`; it may be omitted (linear).
    """
    center, width, _ = _parse_window_parts(value)
    return center, width


def parse_window_function(value: str) -> str:
    """The function of a ``window`` value: linear, linear-exact or sigmoid."""
    return _parse_window_parts(value)[2]


def parse_viewport(value: str) -> tuple[int, int]:
    """(width, height) of a PS3.18 ``viewport=vw,vh[,sx,sy,sw,sh]`` value.

    The source region (sx, sy, sw, sh; each may be empty) is validated but not
    applied: the whole frame is scaled to fit (vw, vh).
    """
    parts = [part.strip() for part in value.split(",")]
    if len(parts) not in (2, 6):
        raise ValueError(f"viewport must be 'vw,vh' or 'vw,vh,sx,sy,sw,sh', got {value!r}")
    try:
        width, height = int(parts[0]), int(parts[1])
        for part in parts[2:]:
            if part:
                int(part)
    except ValueError:
        raise ValueError(f"viewport values must be integers, got {value!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"viewport width and height must be positive, got {value!r}")
    return width, height


def _media_format(media_type: str) -> str:
    base = media_type.split(";", 1)[0].strip().lower()
    try:
        return RENDERED_MEDIA_TYPES[base]
    except KeyError:
        raise PixelDataError(
            f"rendered media type {media_type!r} is not supported: use one of "
            f"{', '.join(RENDERED_MEDIA_TYPES)}"
        ) from None


def _first_number(value: object) -> float | None:
    """First value of a possibly multi-valued DS element, None if empty."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _functional_item(header: Dataset, frame_number: int | None, sequence: str) -> Dataset | None:
    """``sequence``'s item from the frame's or the shared functional groups
    (enhanced multi-frame objects keep rescale and window values there)."""
    groups = []
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if frame_number is not None and per_frame and 0 < frame_number <= len(per_frame):
        groups.append(per_frame[frame_number - 1])
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def _modality(arr: np.ndarray, header: Dataset, frame_number: int | None) -> np.ndarray:
    if header.get("ModalityLUTSequence") or (
        "RescaleSlope" in header and "RescaleIntercept" in header
    ):
        return apply_modality_lut(arr, header)
    item = _functional_item(header, frame_number, "PixelValueTransformationSequence")
    if item is not None:
        slope = _first_number(item.get("RescaleSlope"))
        intercept = _first_number(item.get("RescaleIntercept"))
        if slope is not None and intercept is not None:
            return arr.astype(np.float64) * slope + intercept
    return arr


def _header_window(
    header: Dataset, frame_number: int | None
) -> tuple[float, float, str] | None:
    for source in (header, _functional_item(header, frame_number, "FrameVOILUTSequence")):
        if source is None:
            continue
        center = _first_number(source.get("WindowCenter"))
        width = _first_number(source.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = _HEADER_FUNCTIONS.get(
                str(source.get("VOILUTFunction", "LINEAR")).upper(), "linear"
            )
            return center, width, function
    return None


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing to the 0..255 output range."""
    x = x.astype(np.float64, copy=False)
    if function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "linear-exact":
        y = ((x - center) / width + 0.5) * 255.0
    else:
        width = max(width, 1.0)
        if width == 1.0:
            return np.where(x > center - 0.5, 255.0, 0.0)
        y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.clip(y, 0.0, 255.0)


def _min_max(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    low, high = float(np.nanmin(x)), float(np.nanmax(x))
    if high <= low:
        return np.zeros_like(x)
    return (x - low) * (255.0 / (high - low))


def _to_uint8(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(y)), 0, 255).astype(np.uint8)


def _grayscale(
    arr: np.ndarray,
    header: Dataset,
    window: tuple[float, float] | None,
    window_function: str,
    frame_number: int | None,
) -> np.ndarray:
    values = _modality(arr, header, frame_number)
    if window is not None:
        y = _apply_window(values, window[0], window[1], window_function)
    elif (header_window := _header_window(header, frame_number)) is not None:
        y = _apply_window(values, *header_window)
    elif header.get("VOILUTSequence"):
        y = _min_max(apply_voi_lut(values, header, index=0))
    else:
        y = _min_max(values)
    out = _to_uint8(y)
    if str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return out


def _colour(arr: np.ndarray, header: Dataset, photometric: str) -> np.ndarray:
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, photometric, "RGB")
    elif photometric not in ("RGB", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"):
        raise PixelDataError(f"cannot render photometric interpretation {photometric!r}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind in "ui":
        bits = int(header.get("BitsStored") or arr.dtype.itemsize * 8)
        return _to_uint8(arr.astype(np.float64) * (255.0 / (2**bits - 1)))
    return _to_uint8(_min_max(arr))


def _palette(arr: np.ndarray, header: Dataset) -> np.ndarray:
    try:
        rgb = apply_color_lut(arr, header)
    except (AttributeError, KeyError, ValueError) as exc:
        raise PixelDataError(f"PALETTE COLOR frame without a usable palette: {exc}") from exc
    if rgb.dtype == np.uint8:
        return rgb
    return _to_uint8(rgb.astype(np.float64) / 257.0)


def _fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    """Scale to fit inside the viewport, keeping the aspect ratio."""
    max_width, max_height = viewport
    if max_width <= 0 or max_height <= 0:
        raise ValueError(f"viewport must be positive, got {viewport}")
    scale = min(max_width / image.width, max_height / image.height)
    size = (
        min(max_width, max(1, round(image.width * scale))),
        min(max_height, max(1, round(image.height * scale))),
    )
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def render_frame(
    pixels: np.ndarray,
    header: Dataset,
    *,
    media_type: str = "image/jpeg",
    window: tuple[float, float] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int | None = None,
    window_function: str = "linear",
    photometric_interpretation: str | None = None,
    frame_number: int | None = None,
) -> bytes:
    """Render one decoded frame as an 8-bit JPEG, PNG or GIF image.

    ``pixels`` is shaped (rows, columns) or (rows, columns, 3), as returned by
    ``decode_frame``.  Grayscale: Modality LUT, then VOI from ``window``
    (center, width), else the header's first Window Center/Width, else its VOI
    LUT, else the frame's min/max; MONOCHROME1 is inverted.  Colour frames
    are taken as RGB (``decode_frame`` converts YBR) unless
    ``photometric_interpretation`` says they are still YBR_FULL(_422).
    ``frame_number`` selects per-frame functional groups of enhanced objects.
    """
    image_format = _media_format(media_type)
    if quality is None:
        quality = DEFAULT_QUALITY
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    if window_function not in WINDOW_FUNCTIONS:
        raise ValueError(
            f"window function {window_function!r} is not one of {', '.join(WINDOW_FUNCTIONS)}"
        )
    if window is not None and not window[1] > 0:
        raise ValueError(f"window width must be greater than 0, got {window[1]}")

    arr = np.asarray(pixels)
    stored = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if arr.ndim == 2:
        if stored == "PALETTE COLOR":
            out = _palette(arr, header)
        else:
            out = _grayscale(arr, header, window, window_function, frame_number)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        # decode_frame returns RGB for every YBR photometric interpretation
        out = _colour(arr, header, photometric_interpretation or "RGB")
    else:
        raise PixelDataError(
            f"expected one frame shaped (rows, columns) or (rows, columns, 3), "
            f"got shape {arr.shape}"
        )

    image = Image.fromarray(np.ascontiguousarray(out))
    if viewport is not None:
        image = _fit(image, viewport)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, image_format)
    return buffer.getvalue()
