"""Frame-level access to the pixel data of DICOM Part 10 files stored unchanged.

At ingest :func:`index_pixel_data` walks the file's element headers (never
reading the pixel data value) and records where each frame's bytes are.  The
resulting :class:`FrameIndex` is stored as compact JSON next to the instance,
so serving one frame later is a seek plus a ranged read of just that frame
(:func:`read_stored_frame`), optionally followed by decoding that one frame
(:func:`decode_frame`, :func:`frame_as_explicit_le`).

All file access goes through ``seek``/``read`` on a binary file-like object, so
the blob may live on object storage behind a ranged-read file adapter.

Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) compresses the whole
dataset, so frames have no fixed position in the file: such instances get a
``FrameIndex`` with ``frames == []`` and the readers that can fall back
(:func:`decode_frame`, :func:`frame_as_explicit_le`) inflate the whole dataset.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

logger = logging.getLogger(__name__)

__all__ = [
    "DEFLATED_TRANSFER_SYNTAX",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "MEDIA_TYPES",
    "FrameIndex",
    "PixelDataError",
    "UncompressedFrame",
    "check_decodable",
    "decode_frame",
    "frame_as_explicit_le",
    "frame_media_type",
    "index_pixel_data",
    "read_stored_frame",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
NATIVE_TRANSFER_SYNTAXES = frozenset(
    [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN,
     DEFLATED_TRANSFER_SYNTAX]
)

PIXEL_DATA_TAG = 0x7FE00010
_PIXEL_KEYWORDS = {
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
    PIXEL_DATA_TAG: "PixelData",
}

# PS3.18 Table 8.7.3-5 (compressed bulk data media types).  The video entries
# describe the whole stream: video pixel data is a single "frame" item.
MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}

# What to install when pydicom has no working decoder for a transfer syntax.
_INSTALL_HINTS: dict[str, str] = {
    **dict.fromkeys(
        ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
         "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
         "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"],
        "pylibjpeg-libjpeg",
    ),
    **dict.fromkeys(
        ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
         "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
         "1.2.840.10008.1.2.4.203"],
        "pylibjpeg-openjpeg",
    ),
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}

_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
# Explicit VRs encoded with 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()
)
# JPEG EOI / JPEG 2000 EOC marker, expected in the last bytes of a frame
_EOI = b"\xff\xd9"
_JSON_VERSION = 1


class PixelDataError(ValueError):
    """Pixel data cannot be indexed, read or decoded as requested."""


@dataclass
class FrameIndex:
    """Where each frame's stored bytes are in a Part 10 file.

    ``frames[i]`` is the list of ``(file offset, length)`` ranges whose
    concatenation is frame ``i + 1`` as stored: a single range for native data,
    the fragment values (without item headers) for encapsulated data.

    Native special cases (the ranges are then a superset of the frame):

    * BitsAllocated 1 with frames not aligned to bytes: the range covers every
      byte holding one of the frame's bits (and so bits of its neighbours).
    * 8-bit data in Explicit VR Big Endian with VR OW (stored as byte-swapped
      16-bit words): the range is widened to whole words.

    ``frames == []`` means the instance could not be indexed (deflated transfer
    syntax); see :func:`decode_frame` for the fallback.
    """

    transfer_syntax: str
    encapsulated: bool
    number_of_frames: int
    frames: list[list[tuple[int, int]]]
    pixel_data_offset: int
    pixel_data_length: int | None
    pixel_data_tag: int = PIXEL_DATA_TAG
    # The explicit VR of the pixel data element; None for implicit VR
    pixel_data_vr: str | None = None

    def to_json(self) -> str:
        doc: dict[str, object] = {
            "v": _JSON_VERSION,
            "ts": self.transfer_syntax,
            "enc": int(self.encapsulated),
            "n": self.number_of_frames,
            "po": self.pixel_data_offset,
            "pl": self.pixel_data_length,
        }
        if self.pixel_data_tag != PIXEL_DATA_TAG:
            doc["tag"] = self.pixel_data_tag
        if self.pixel_data_vr is not None:
            doc["vr"] = self.pixel_data_vr
        stride = _regular_stride(self.frames)
        if stride is not None:
            doc["fs"] = stride
        else:
            doc["f"] = [[value for rng in frame for value in rng] for frame in self.frames]
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> FrameIndex:
        try:
            doc = json.loads(s)
            version = doc.get("v", _JSON_VERSION)
            if version != _JSON_VERSION:
                raise PixelDataError(f"unsupported frame index version {version}")
            if "fs" in doc:
                first, length, stride, count = doc["fs"]
                frames = [[(first + i * stride, length)] for i in range(count)]
            else:
                frames = [
                    [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
                    for flat in doc["f"]
                ]
            return cls(
                transfer_syntax=doc["ts"],
                encapsulated=bool(doc["enc"]),
                number_of_frames=int(doc["n"]),
                frames=frames,
                pixel_data_offset=int(doc["po"]),
                pixel_data_length=None if doc["pl"] is None else int(doc["pl"]),
                pixel_data_tag=int(doc.get("tag", PIXEL_DATA_TAG)),
                pixel_data_vr=doc.get("vr"),
            )
        except PixelDataError:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise PixelDataError(f"malformed frame index JSON: {exc}") from exc

    @property
    def indexed(self) -> bool:
        """False when frames have no position in the file (deflated data)."""
        return bool(self.frames)


@dataclass(frozen=True)
class UncompressedFrame:
    """One frame as Explicit VR Little Endian native pixel bytes.

    ``photometric_interpretation`` and ``planar_configuration`` describe
    ``data`` and may differ from the stored instance's values (for example a
    YBR_FULL_422 JPEG frame decodes to RGB).  ``planar_configuration`` is None
    for single-sample data.
    """

    data: bytes
    photometric_interpretation: str
    planar_configuration: int | None


def _regular_stride(frames: list[list[tuple[int, int]]]) -> list[int] | None:
    """``[first offset, length, stride, count]`` if every frame is one range of
    the same length at evenly spaced offsets (native data), else None."""
    if len(frames) < 2 or any(len(frame) != 1 for frame in frames):
        return None
    first, length = frames[0][0]
    stride = frames[1][0][0] - first
    for i, frame in enumerate(frames):
        if frame[0] != (first + i * stride, length):
            return None
    return [first, length, stride, len(frames)]


def frame_media_type(transfer_syntax: str) -> str:
    """The PS3.18 media type of a frame stored in ``transfer_syntax``."""
    if transfer_syntax in MEDIA_TYPES:
        return MEDIA_TYPES[transfer_syntax]
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        return "application/octet-stream"
    raise PixelDataError(f"transfer syntax {transfer_syntax} has no known frame media type")


# --- header walking ---------------------------------------------------------


class _ChunkedReader:
    """Serves many small reads at nearby offsets with few reads of ``fp``.

    Element and item headers are 8-12 bytes each; on object storage every
    ``read`` may be a ranged request, so reads are grouped in chunks.
    """

    def __init__(self, fp: BinaryIO, chunk_size: int = 16 * 1024) -> None:
        self._fp = fp
        self._chunk_size = chunk_size
        self._start = 0
        self._buffer = b""

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer only at end of file."""
        end = offset + size
        if not (self._start <= offset and end <= self._start + len(self._buffer)):
            self._fp.seek(offset)
            self._buffer = _read_fully(self._fp, max(size, self._chunk_size))
            self._start = offset
        return self._buffer[offset - self._start : end - self._start]

    def read_exact(self, offset: int, size: int, what: str) -> bytes:
        data = self.read(offset, size)
        if len(data) != size:
            raise PixelDataError(
                f"unexpected end of file at offset {offset} while reading {what}"
            )
        return data


def _read_fully(fp: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, looping over short reads; fewer only at EOF."""
    parts = []
    remaining = size
    while remaining > 0:
        chunk = fp.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


@dataclass
class _Element:
    tag: int
    vr: str | None
    length: int
    value_offset: int


class _Walker:
    """Reads element headers of a dataset encoded with one transfer syntax."""

    def __init__(self, reader: _ChunkedReader, implicit: bool, little: bool) -> None:
        self.reader = reader
        self.implicit = implicit
        self.little = little
        self._endian = "<" if little else ">"

    def element(self, offset: int) -> _Element | None:
        """The element header at ``offset``; None at end of file."""
        head = self.reader.read(offset, 8)
        if not head:
            return None
        if len(head) < 8:
            # Trailing bytes shorter than an element header: treat as padding
            logger.debug("ignoring %d trailing bytes at offset %d", len(head), offset)
            return None
        group, elem = struct.unpack(f"{self._endian}HH", head[:4])
        tag = group << 16 | elem
        # Item and delimiter tags never have a VR, even in explicit VR data
        if self.implicit or group == 0xFFFE:
            (length,) = struct.unpack(f"{self._endian}L", head[4:8])
            return _Element(tag, None, length, offset + 8)
        vr = head[4:6]
        if vr in _LONG_VRS:
            raw = self.reader.read_exact(offset + 8, 4, f"length of {_tag_str(tag)}")
            (length,) = struct.unpack(f"{self._endian}L", raw)
            return _Element(tag, vr.decode("ascii"), length, offset + 12)
        (length,) = struct.unpack(f"{self._endian}H", head[6:8])
        return _Element(tag, vr.decode("ascii", "replace"), length, offset + 8)

    def nested(self, element: _Element) -> _Walker:
        """The walker for the items of an undefined length ``element``."""
        if element.vr == "UN":
            # PS3.5 6.2.2: undefined length UN content is Implicit VR LE
            return _Walker(self.reader, implicit=True, little=True)
        return self

    def skip_undefined(self, offset: int) -> int:
        """Skip sequence items starting at ``offset`` up to and including the
        sequence delimiter; return the offset just after it."""
        while True:
            item = self.element(offset)
            if item is None:
                raise PixelDataError(
                    f"unexpected end of file in an undefined length sequence at {offset}"
                )
            offset = item.value_offset
            if item.tag == _SEQUENCE_DELIMITER:
                return offset
            if item.tag != _ITEM:
                raise PixelDataError(
                    f"unexpected tag {_tag_str(item.tag)} at offset {offset - 8} "
                    "inside an undefined length sequence"
                )
            if item.length == _UNDEFINED_LENGTH:
                offset = self.skip_item(offset)
            else:
                offset += item.length

    def skip_item(self, offset: int) -> int:
        """Skip the elements of an undefined length item up to and including
        its item delimiter; return the offset just after it."""
        walker = self
        if not self.implicit and _looks_implicit(self.reader, offset):
            # Items may be implicit VR inside explicit VR data (as pydicom allows)
            walker = _Walker(self.reader, implicit=True, little=self.little)
        while True:
            element = walker.element(offset)
            if element is None:
                raise PixelDataError(
                    f"unexpected end of file in an undefined length item at {offset}"
                )
            offset = element.value_offset
            if element.tag == _ITEM_DELIMITER:
                return offset
            if element.length == _UNDEFINED_LENGTH:
                offset = walker.nested(element).skip_undefined(offset)
            else:
                offset += element.length


def _looks_implicit(reader: _ChunkedReader, offset: int) -> bool:
    """Whether the element at ``offset`` has no explicit VR: pydicom's
    heuristic, two bytes after the tag that are not both 'A'-'Z'."""
    head = reader.read(offset, 6)
    if len(head) < 6 or head[:2] == b"\xfe\xff" or head[:2] == b"\xff\xfe":
        return False
    return not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)


def _tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _dataset_start(reader: _ChunkedReader) -> int:
    """Offset of the first dataset element after the preamble and file meta."""
    offset = 132 if reader.read(128, 4) == b"DICM" else 0
    meta = _Walker(reader, implicit=False, little=True)
    while True:
        head = reader.read(offset, 2)
        if len(head) < 2 or struct.unpack("<H", head)[0] != 0x0002:
            return offset
        element = meta.element(offset)
        if element is None:
            return offset
        if element.length == _UNDEFINED_LENGTH:
            raise PixelDataError(f"undefined length file meta element {_tag_str(element.tag)}")
        offset = element.value_offset + element.length


def _find_pixel_element(
    reader: _ChunkedReader, implicit: bool, little: bool
) -> _Element | None:
    """The top-level (7FE0,0008/0009/0010) element header, walking with seeks."""
    offset = _dataset_start(reader)
    found_implicit = _looks_implicit(reader, offset)
    if found_implicit != implicit:
        # Files whose encoding contradicts their transfer syntax exist; pydicom
        # reads them with the encoding found, so do the same
        logger.warning(
            "dataset is %s VR but its transfer syntax says %s VR",
            *(("implicit", "explicit") if found_implicit else ("explicit", "implicit")),
        )
        implicit = found_implicit
    walker = _Walker(reader, implicit, little)
    while True:
        element = walker.element(offset)
        if element is None or element.tag > PIXEL_DATA_TAG:
            return None
        if element.tag in _PIXEL_KEYWORDS:
            return element
        offset = element.value_offset
        if element.length == _UNDEFINED_LENGTH:
            offset = walker.nested(element).skip_undefined(offset)
        else:
            offset += element.length


# --- indexing ---------------------------------------------------------------


def _transfer_syntax(header: Dataset) -> UID:
    meta = getattr(header, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return UID(str(uid))
    # No file meta: fall back to how pydicom actually read the dataset
    implicit, little = getattr(header, "original_encoding", (None, None))
    if implicit is None or little is None:
        raise PixelDataError("header has no (0002,0010) Transfer Syntax UID")
    if implicit:
        return UID(IMPLICIT_VR_LITTLE_ENDIAN)
    return UID(EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN)


def _encoding(uid: UID) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax."""
    if not uid.is_transfer_syntax:
        raise PixelDataError(f"{uid} is not a known transfer syntax")
    return bool(uid.is_implicit_VR), bool(uid.is_little_endian)


def _number_of_frames(header: Dataset) -> int:
    value = header.get("NumberOfFrames")
    try:
        frames = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise PixelDataError(f"invalid (0028,0008) Number of Frames {value!r}") from None
    # pydicom treats 0 as 1 as well
    return max(frames, 1)


def _required_int(header: Dataset, keyword: str) -> int:
    value = header.get(keyword)
    if value is None or value == "":
        raise PixelDataError(f"header has pixel data but no {keyword}")
    return int(value)


def _native_frame_bits(header: Dataset) -> int:
    rows = _required_int(header, "Rows")
    columns = _required_int(header, "Columns")
    bits_allocated = _required_int(header, "BitsAllocated")
    samples = int(header.get("SamplesPerPixel") or 1)
    if bits_allocated != 1 and bits_allocated % 8:
        raise PixelDataError(f"unsupported Bits Allocated {bits_allocated}")
    bits = rows * columns * samples * bits_allocated
    if header.get("PhotometricInterpretation") == "YBR_FULL_422":
        # Native YBR_FULL_422 stores 2 chroma samples per 2 pixels (PS3.3 C.7.6.3.1.2)
        bits = bits // 3 * 2
    return bits


def _is_be_swapped_8bit(transfer_syntax: str, vr: str | None, header: Dataset) -> bool:
    """8-bit Big Endian data encoded as OW: bytes swapped in 16-bit words."""
    return (
        transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
        and vr == "OW"
        and int(header.get("BitsAllocated") or 0) == 8
    )


def _native_ranges(
    header: Dataset,
    offset: int,
    length: int,
    number_of_frames: int,
    swapped_words: bool,
) -> list[list[tuple[int, int]]]:
    frame_bits = _native_frame_bits(header)
    needed = math.ceil(frame_bits * number_of_frames / 8)
    if length < needed:
        raise PixelDataError(
            f"native pixel data is {length} bytes, {number_of_frames} frame(s) of "
            f"{frame_bits / 8:g} bytes need {needed}: the file may be truncated"
        )
    frames = []
    for i in range(number_of_frames):
        start = i * frame_bits // 8
        end = math.ceil((i + 1) * frame_bits / 8)
        if swapped_words:
            start -= start % 2
            end += end % 2
        frames.append([(offset + start, end - start)])
    return frames


def _fragments(
    reader: _ChunkedReader, offset: int, end: int | None
) -> list[tuple[int, int]]:
    """(value offset, length) of each fragment item from ``offset`` to the
    sequence delimiter (or ``end`` for a defined length value)."""
    fragments = []
    while end is None or offset < end:
        head = reader.read(offset, 8)
        if not head and end is None:
            # Seen in the wild (and tolerated by pydicom): no sequence delimiter
            logger.warning("encapsulated pixel data ends without a sequence delimiter")
            break
        if len(head) < 8:
            raise PixelDataError(
                f"unexpected end of file at offset {offset} while reading an "
                "encapsulated pixel data item"
            )
        group, elem, length = struct.unpack("<HHL", head)
        tag = group << 16 | elem
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise PixelDataError(
                f"unexpected tag {_tag_str(tag)} at offset {offset} in the "
                "encapsulated pixel data"
            )
        if length == _UNDEFINED_LENGTH:
            raise PixelDataError(f"undefined length fragment at offset {offset}")
        fragments.append((offset + 8, length))
        offset += 8 + length
    return fragments


def _extended_offsets(header: Dataset) -> tuple[list[int], list[int]] | None:
    if "ExtendedOffsetTable" not in header or "ExtendedOffsetTableLengths" not in header:
        return None
    raw_offsets = header.ExtendedOffsetTable
    raw_lengths = header.ExtendedOffsetTableLengths
    if not raw_offsets or not raw_lengths:
        return None
    # Encapsulated transfer syntaxes are always little endian
    offsets = list(struct.unpack(f"<{len(raw_offsets) // 8}Q", raw_offsets))
    lengths = list(struct.unpack(f"<{len(raw_lengths) // 8}Q", raw_lengths))
    if len(offsets) != len(lengths):
        logger.warning("Extended Offset Table and its lengths differ in size: ignored")
        return None
    return offsets, lengths


def _group_by_offsets(
    fragments: list[tuple[int, int]], first_item: int, offsets: list[int]
) -> list[list[tuple[int, int]]] | None:
    """Frames from offsets (relative to the first fragment's item tag) to each
    frame's first fragment; None if the offsets don't match fragment starts."""
    starts = {value_offset - 8 - first_item: i for i, (value_offset, _) in enumerate(fragments)}
    indices = [starts.get(offset) for offset in offsets]
    if any(i is None for i in indices) or indices != sorted(set(indices)) or indices[0] != 0:
        return None
    bounds = [*indices, len(fragments)]
    return [fragments[bounds[i] : bounds[i + 1]] for i in range(len(offsets))]


def _encapsulated_ranges(
    reader: _ChunkedReader,
    header: Dataset,
    value_offset: int,
    value_length: int | None,
    number_of_frames: int,
) -> list[list[tuple[int, int]]]:
    bot_head = reader.read_exact(value_offset, 8, "the Basic Offset Table")
    group, elem, bot_length = struct.unpack("<HHL", bot_head)
    if (group << 16 | elem) != _ITEM or bot_length % 4:
        raise PixelDataError(
            f"invalid Basic Offset Table item at offset {value_offset}"
        )
    bot = []
    if bot_length:
        raw = reader.read_exact(value_offset + 8, bot_length, "the Basic Offset Table")
        bot = list(struct.unpack(f"<{bot_length // 4}L", raw))
    first_item = value_offset + 8 + bot_length
    end = value_offset + value_length if value_length is not None else None
    fragments = _fragments(reader, first_item, end)
    if not fragments:
        raise PixelDataError("encapsulated pixel data has no fragments")

    extended = _extended_offsets(header)
    if extended is not None:
        offsets, lengths = extended
        frames = _group_by_offsets(fragments, first_item, offsets)
        if frames is not None and all(len(f) == 1 for f in frames):
            # Lengths may exclude the trailing padding byte of odd length frames
            return [[(f[0][0], length)] for f, length in zip(frames, lengths)]
        logger.warning("Extended Offset Table does not match the fragments: ignored")

    if bot:
        frames = _group_by_offsets(fragments, first_item, bot)
        if frames is not None:
            return frames
        logger.warning("Basic Offset Table does not match the fragments: ignored")

    if number_of_frames == 1:
        return [fragments]
    if len(fragments) == number_of_frames:
        return [[fragment] for fragment in fragments]
    if len(fragments) < number_of_frames:
        raise PixelDataError(
            f"encapsulated pixel data has {len(fragments)} fragments for "
            f"{number_of_frames} frames"
        )
    # More fragments than frames and no offset table: a JPEG family frame ends
    # with an EOI/EOC marker (possibly followed by padding), as pydicom assumes
    frames: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    for fragment_offset, length in fragments:
        current.append((fragment_offset, length))
        tail = min(length, 10)
        if _EOI in reader.read(fragment_offset + length - tail, tail):
            frames.append(current)
            current = []
    if current:
        frames.append(current)
    if len(frames) != number_of_frames:
        logger.warning(
            "found %d frames by JPEG end markers, Number of Frames is %d",
            len(frames), number_of_frames,
        )
    return frames[:number_of_frames]


def index_pixel_data(fp: BinaryIO, header: Dataset) -> FrameIndex | None:
    """Index where each frame's bytes are in the Part 10 file ``fp``.

    ``header`` is the same file read with ``dcmread(..., stop_before_pixels=True)``
    (the file position pydicom leaves behind is not at the pixel data tag, so
    the top-level element headers are walked again here, seeking over values).
    Only element headers, item headers, offset tables and, for multi-fragment
    JPEG frames without an offset table, the fragments' last bytes are read, in
    16 KiB chunks.  Returns None if the instance has no pixel data.
    Raises :class:`PixelDataError` for pixel data that cannot be mapped to
    frames (truncated native data, malformed encapsulation).
    """
    uid = _transfer_syntax(header)
    if str(uid) == DEFLATED_TRANSFER_SYNTAX:
        if "Rows" not in header or "Columns" not in header:
            return None
        logger.debug("deflated transfer syntax: pixel data left unindexed")
        return FrameIndex(
            transfer_syntax=str(uid),
            encapsulated=False,
            number_of_frames=_number_of_frames(header),
            frames=[],
            pixel_data_offset=0,
            pixel_data_length=None,
        )
    implicit, little = _encoding(uid)
    reader = _ChunkedReader(fp)
    element = _find_pixel_element(reader, implicit, little)
    if element is None:
        return None
    number_of_frames = _number_of_frames(header)
    length = None if element.length == _UNDEFINED_LENGTH else element.length
    encapsulated = length is None or bool(uid.is_encapsulated)
    if encapsulated:
        if element.tag != PIXEL_DATA_TAG:
            raise PixelDataError(f"{_tag_str(element.tag)} cannot be encapsulated")
        frames = _encapsulated_ranges(
            reader, header, element.value_offset, length, number_of_frames
        )
    else:
        swapped = _is_be_swapped_8bit(str(uid), element.vr, header)
        frames = _native_ranges(
            header, element.value_offset, length or 0, number_of_frames, swapped
        )
        fp.seek(0, 2)
        file_size = fp.tell()
        if frames and sum(frames[-1][-1]) > file_size:
            raise PixelDataError(
                f"file is {file_size} bytes but its last frame ends at byte "
                f"{sum(frames[-1][-1])}: the file is truncated"
            )
    return FrameIndex(
        transfer_syntax=str(uid),
        encapsulated=encapsulated,
        number_of_frames=number_of_frames,
        frames=frames,
        pixel_data_offset=element.value_offset,
        pixel_data_length=length,
        pixel_data_tag=element.tag,
        pixel_data_vr=element.vr,
    )


# --- reading and decoding ---------------------------------------------------


def _check_number(index: FrameIndex, number: int) -> None:
    total = index.number_of_frames
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= total:
        raise PixelDataError(
            f"frame {number} requested, instance has {total} frame{'s' if total != 1 else ''}"
        )
    if index.frames and number > len(index.frames):
        raise PixelDataError(
            f"frame {number} requested, only {len(index.frames)} of {total} frames "
            "were found in the encapsulated pixel data"
        )


def read_stored_frame(fp: BinaryIO, index: FrameIndex, number: int) -> bytes:
    """Frame ``number`` (1-based) exactly as stored, reading only its ranges.

    Native data comes in the stored byte order; encapsulated data as the
    concatenated fragment values (the compressed codestream).
    """
    _check_number(index, number)
    if not index.frames:
        raise PixelDataError(
            f"transfer syntax {index.transfer_syntax} frames have no position in "
            "the file; use decode_frame or frame_as_explicit_le"
        )
    parts = []
    for offset, length in index.frames[number - 1]:
        fp.seek(offset)
        data = _read_fully(fp, length)
        if len(data) != length:
            raise PixelDataError(
                f"frame {number}: read {len(data)} of {length} bytes at offset "
                f"{offset}: the stored file is shorter than indexed"
            )
        parts.append(data)
    return b"".join(parts)


def _decoder(uid: str) -> Decoder:
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise PixelDataError(
            f"transfer syntax {uid} ({UID(uid).name}) cannot be decoded: "
            "no pixel data decoder exists for it"
        ) from None
    if not decoder.is_available:
        hint = _INSTALL_HINTS.get(uid, " / ".join(decoder.missing_dependencies))
        raise PixelDataError(f"transfer syntax {uid} cannot be decoded: install {hint}")
    return decoder


def check_decodable(transfer_syntax: str) -> None:
    """Raise :class:`PixelDataError` saying what is missing when frames stored in
    ``transfer_syntax`` cannot be decoded here (native syntaxes always can)."""
    if str(transfer_syntax) not in NATIVE_TRANSFER_SYNTAXES:
        _decoder(str(transfer_syntax))


def _single_frame_native(
    data: bytes, header: Dataset, index: FrameIndex, number: int
) -> bytes:
    """Turn stored native frame bytes into a self-contained single frame:
    bit-packed frames realigned to bit 0, swapped 8-bit OW words unswapped."""
    frame_bits = _native_frame_bits(header)
    start_bit = (number - 1) * frame_bits
    if int(header.get("BitsAllocated") or 0) == 1 and (start_bit % 8 or frame_bits % 8):
        # The first/last bytes hold bits of the neighbouring frames
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        offset = start_bit % 8
        return np.packbits(bits[offset : offset + frame_bits], bitorder="little").tobytes()
    if _is_be_swapped_8bit(index.transfer_syntax, index.pixel_data_vr, header):
        frame_bytes = frame_bits // 8
        skip = (start_bit // 8) % 2
        words = np.frombuffer(data, ">u2").astype("<u2")
        return words.tobytes()[skip : skip + frame_bytes]
    return data


def _pixel_options(header: Dataset, index: FrameIndex) -> dict:
    opts = as_pixel_options(header, number_of_frames=1)
    opts.pop("extended_offsets", None)
    opts["pixel_keyword"] = _PIXEL_KEYWORDS.get(index.pixel_data_tag, "PixelData")
    if not index.encapsulated and index.pixel_data_vr:
        # Swapped 8-bit OW words were already undone by _single_frame_native
        swapped = _is_be_swapped_8bit(index.transfer_syntax, index.pixel_data_vr, header)
        opts["pixel_vr"] = "OB" if swapped else index.pixel_data_vr
    return opts


def _decode(
    fp: BinaryIO, header: Dataset, index: FrameIndex, number: int
) -> tuple[np.ndarray, dict]:
    """The decoded frame and pydicom's description of it (photometric
    interpretation after colour conversion, ...)."""
    _check_number(index, number)
    if not index.frames:
        return _decode_unindexed(fp, number)
    decoder = _decoder(index.transfer_syntax)
    data = read_stored_frame(fp, index, number)
    if index.encapsulated:
        src = encapsulate([data], has_bot=False)
    else:
        src = _single_frame_native(data, header, index, number)
    opts = _pixel_options(header, index)
    try:
        return decoder.as_array(src, index=0, **opts)
    except PixelDataError:
        raise
    except Exception as exc:
        raise PixelDataError(
            f"frame {number} ({UID(index.transfer_syntax).name}) could not be decoded: {exc}"
        ) from exc


def _decode_unindexed(fp: BinaryIO, number: int) -> tuple[np.ndarray, dict]:
    """Fallback for unindexable (deflated) instances: reads the whole dataset."""
    logger.debug("decoding frame %d from the whole dataset", number)
    fp.seek(0)
    ds = pydicom.dcmread(fp)
    uid = str(ds.file_meta.TransferSyntaxUID)
    decoder = _decoder(uid)
    try:
        return decoder.as_array(ds, index=number - 1, **as_pixel_options(ds))
    except Exception as exc:
        raise PixelDataError(f"frame {number} could not be decoded: {exc}") from exc


def decode_frame(
    fp: BinaryIO, header: Dataset, index: FrameIndex, number: int
) -> np.ndarray:
    """Decode frame ``number`` (1-based) only, like ``pixel_array[number - 1]``.

    Shape is (rows, columns) or (rows, columns, samples); YBR colour data is
    returned as RGB (pydicom's default).  Unindexed (deflated) instances are
    decoded from the whole dataset.
    """
    return _decode(fp, header, index, number)[0]


def _to_little_endian_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(arr).tobytes()


def _swap_native_be(data: bytes, header: Dataset, index: FrameIndex, number: int) -> bytes:
    data = _single_frame_native(data, header, index, number)
    bits_allocated = int(header.get("BitsAllocated") or 0)
    if bits_allocated in (16, 32, 64):
        dtype = np.dtype(f">u{bits_allocated // 8}")
        return np.frombuffer(data, dtype).astype(dtype.newbyteorder("<")).tobytes()
    # 8-bit OB data has no byte order; 1-bit data is bit-packed identically
    return data


def frame_as_explicit_le(
    fp: BinaryIO, header: Dataset, index: FrameIndex, number: int
) -> UncompressedFrame:
    """Frame ``number`` (1-based) as Explicit VR Little Endian native bytes.

    Native little endian frames are returned as stored (realigned to a byte
    boundary for bit-packed data, so a native YBR_FULL_422 or planar frame
    keeps its layout), big endian ones byte-swapped, and compressed ones
    decoded like :func:`decode_frame`: decoded YBR_FULL, YBR_FULL_422, YBR_ICT
    and YBR_RCT colour data comes out as interleaved RGB (for lossless YBR_FULL
    RLE/JPEG-LS data the colour conversion rounds).  Always use the returned
    photometric interpretation and planar configuration.
    """
    _check_number(index, number)
    photometric = str(header.get("PhotometricInterpretation", ""))
    samples = int(header.get("SamplesPerPixel") or 1)
    planar = int(header.get("PlanarConfiguration") or 0) if samples > 1 else None

    if index.frames and not index.encapsulated:
        data = read_stored_frame(fp, index, number)
        if index.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
            data = _swap_native_be(data, header, index, number)
        else:
            data = _single_frame_native(data, header, index, number)
        return UncompressedFrame(data, photometric, planar)

    if not index.frames:
        # Deflated: the inflated pixel data is native little endian
        fp.seek(0)
        ds = pydicom.dcmread(fp)
        keyword = _PIXEL_KEYWORDS.get(index.pixel_data_tag, "PixelData")
        value = ds[keyword].value
        frames = _native_ranges(ds, 0, len(value), index.number_of_frames, False)
        ((offset, length),) = frames[number - 1]
        data = _single_frame_native(value[offset : offset + length], ds, index, number)
        return UncompressedFrame(data, photometric, planar)

    arr, props = _decode(fp, header, index, number)
    if int(header.get("BitsAllocated") or 0) == 1:
        data = np.packbits(arr.ravel(), bitorder="little").tobytes()
    else:
        data = _to_little_endian_bytes(arr)
    return UncompressedFrame(
        data,
        str(props.get("photometric_interpretation", photometric)),
        0 if samples > 1 else None,
    )
