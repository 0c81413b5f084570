"""The preview stream: a whole series as JPEG 2000 codestreams behind one JSON header.

Layout (all integers little endian)::

    bytes 0-3     magic  b"DPV1"
    bytes 4-7     uint32 N: length of the header
    bytes 8-8+N   the header: UTF-8 JSON (the geometry, see README "Preview stream")
    then          the codestreams of the slices, back to back, in the header's order

Each ``header["slices"][i]`` has ``offset`` and ``length``: where its codestream lies,
counted from the first byte after the header (``data_start = 8 + N``). A subset of slices
(``?slices=a-b``) is the same layout with a header listing only those slices, offsets
counted again from its own data start.
"""
from __future__ import annotations

import json
import struct
from typing import Iterable, Iterator

MAGIC = b"DPV1"
MEDIA_TYPE = "application/vnd.dental-gateway.preview"
PREFIX = struct.Struct("<4sI")
MAX_HEADER = 64 * 1024 * 1024


class PreviewFormatError(ValueError):
    """Bytes that are not a preview stream."""


def encode_header(header: dict) -> bytes:
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return PREFIX.pack(MAGIC, len(body)) + body


def read_header(read) -> tuple[dict, int]:
    """(header, data start) from a ``read(n)`` callable positioned at the stream's start."""
    prefix = read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise PreviewFormatError("a preview stream starts with 8 bytes: magic and header length")
    magic, length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise PreviewFormatError(f"not a preview stream (magic {magic!r}, expected {MAGIC!r})")
    if length > MAX_HEADER:
        raise PreviewFormatError(f"preview header of {length} bytes is larger than {MAX_HEADER}")
    body = read(length)
    if len(body) < length:
        raise PreviewFormatError("the preview stream ends inside its header")
    return json.loads(body), PREFIX.size + length


def subset_header(header: dict, first: int, last: int) -> dict:
    """The header of slices ``first``..``last`` (0-based, inclusive), offsets counted again."""
    chosen, offset = [], 0
    for entry in header["slices"][first:last + 1]:
        chosen.append({**entry, "offset": offset})
        offset += entry["length"]
    return {**header, "slices": chosen, "slice_range": [first + 1, last + 1], "slice_count": len(chosen)}


def iter_stream(header: dict, codestreams: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of a preview stream: its prefix and header, then each codestream."""
    yield encode_header(header)
    yield from codestreams
