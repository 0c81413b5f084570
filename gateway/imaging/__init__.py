"""Pixel data indexing, frame access and rendering for the DICOMweb gateway."""

from gateway.imaging.pixeldata import (
    DEFLATED_TRANSFER_SYNTAX,
    EXPLICIT_VR_LITTLE_ENDIAN,
    MEDIA_TYPES,
    FrameIndex,
    PixelDataError,
    UncompressedFrame,
    decode_frame,
    frame_as_explicit_le,
    frame_media_type,
    index_pixel_data,
    read_stored_frame,
)
from gateway.imaging.render import (
    RENDERED_MEDIA_TYPES,
    WINDOW_FUNCTIONS,
    parse_viewport,
    parse_window,
    parse_window_function,
    render_frame,
)

__all__ = [
    "DEFLATED_TRANSFER_SYNTAX",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "MEDIA_TYPES",
    "RENDERED_MEDIA_TYPES",
    "WINDOW_FUNCTIONS",
    "FrameIndex",
    "PixelDataError",
    "UncompressedFrame",
    "decode_frame",
    "frame_as_explicit_le",
    "frame_media_type",
    "index_pixel_data",
    "parse_viewport",
    "parse_window",
    "parse_window_function",
    "read_stored_frame",
    "render_frame",
]
