"""Re-encoding a stored instance to Explicit or Implicit VR Little Endian, streamed.

WADO-RS retrieves without ``transfer-syntax=*`` and DIMSE peers that accepted no context for
the stored syntax get a native little endian copy of an instance. This service builds that
copy as a stream of chunks and never holds the whole instance in memory:

* the header (the elements before the pixel data, read with ``stop_before_pixels``) is
  re-encoded by pydicom, with the Image Pixel attributes of the decoded frames;
* the pixel data is produced **frame by frame through the stored frame index**
  (:mod:`gateway.imaging.pixeldata`): native little endian values are copied in chunks,
  big endian frames byte-swapped, encapsulated frames decoded one at a time;
* the elements stored after the pixel data (trailing padding, private tags) follow.

Peak memory is about one stored frame plus one decoded frame plus the header, whatever the
number of frames. Deflated instances are first inflated, streaming, into a spool file next
to the blob store's staging folder (their frames have no position in the stored file), and
that spool is then read like an Explicit VR Little Endian instance.

What a native Pixel Data element cannot hold is refused before any byte is produced: a
value over 4 GiB - 2 (its 32-bit length), frames missing from encapsulated data, a transfer
syntax without a decoder here. A frame that fails to decode later in the stream raises
while streaming (HTTP: the response is cut short; DIMSE: the temporary file is never sent).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID

from gateway import headers as dicom_headers
from gateway.errors import BadRequest, GatewayError
from gateway.imaging.pixeldata import (
    DEFLATED_TRANSFER_SYNTAX,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    FrameIndex,
    PixelDataError,
    check_decodable,
    frame_as_explicit_le,
    index_pixel_data,
)

if TYPE_CHECKING:
    from gateway.services.retrieve import RetrieveService
    from storage.base import InstanceRecord

logger = logging.getLogger(__name__)

__all__ = ["TARGET_SYNTAXES", "TranscodeError", "TranscodeService", "TranscodedStream"]

TARGET_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
CHUNK = 1024 * 1024
# PS3.5 7.1.1: a defined length is 32 bits and 0xFFFFFFFF means undefined; values are even
MAX_VALUE_LENGTH = 0xFFFFFFFE
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
# Removed from the header: they describe the encapsulated fragments only (PS3.3 C.7.6.3)
_ENCAPSULATION_ONLY = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)
# Values that are words of 2, 4 or 8 bytes and that pydicom writes as the bytes it read
# (filewriter.write_OWvalue "does not do the byte swapping"): swapped for big endian sources
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


class TranscodeError(BadRequest):
    """The instance cannot be produced in the requested transfer syntax."""


def _name(uid: str) -> str:
    return f"{UID(uid).name} ({uid})" if UID(uid).is_transfer_syntax else str(uid)


@dataclass
class _Source:
    """An opened stored instance: the reader its pixel data is read from (the blob, or the
    inflated spool of a deflated blob), its header and frame index."""

    fh: BinaryIO
    header: Dataset
    index: FrameIndex | None
    transfer_syntax: str  # of ``fh``'s data set (Explicit VR Little Endian for an inflated spool)
    stored_syntax: str
    size: int
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        while self.closers:
            with contextlib.suppress(Exception):
                self.closers.pop()()


class _BitConcatenator:
    """Joins 1-bit frames, each packed from bit 0 of its own first byte, into one bit stream:
    PS3.5 8.1.1 packs bits across frame boundaries when a frame is not a multiple of 8 bits."""

    def __init__(self, frame_bits: int):
        self.frame_bits = frame_bits
        self._carry = np.zeros(0, dtype=np.uint8)

    def add(self, data: bytes) -> bytes:
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: self.frame_bits]
        if self._carry.size:
            bits = np.concatenate([self._carry, bits])
        whole = bits.size - bits.size % 8
        self._carry = bits[whole:].copy()
        return np.packbits(bits[:whole], bitorder="little").tobytes()

    def flush(self) -> bytes:
        carry, self._carry = self._carry, np.zeros(0, dtype=np.uint8)
        return np.packbits(carry, bitorder="little").tobytes() if carry.size else b""


class TranscodedStream:
    """One instance as a Part 10 file in the target syntax, as an iterable of chunks.

    Built by :meth:`TranscodeService.stream`, which opens the blob, reads the header and
    decodes the first frame at once, so that an instance that cannot be produced fails
    before any byte is sent. :attr:`length` is the exact number of bytes the iteration
    yields. Iterate it once; :meth:`close` (also called at the end of the iteration, and by
    WSGI servers on the response) releases the blob and any spool file.
    """

    def __init__(self, service: "TranscodeService", record: "InstanceRecord", target: str):
        self.record = record
        self.target = target
        self._chunk = service.chunk_size
        self._source = service._open(record)
        self._started = False
        try:
            self._prepare()
        except Exception:
            self.close()
            raise

    # --- preparation: header, pixel data plan -------------------------------------------
    def _prepare(self) -> None:
        src = self._source
        index = src.index
        # Frames are decoded with the header as stored; the copy written out gets the
        # attributes of the decoded frames
        header = _shallow_copy(src.header)
        self.implicit = self.target == IMPLICIT_VR_LITTLE_ENDIAN
        self._first: bytes | None = None
        self._mode = "none"
        self._pixel_head = b""
        self._pixel_length = 0
        self._tail = b""
        self._frame_length = 0
        self._bits: _BitConcatenator | None = None
        tail_offset: int | None = None

        if index is not None:
            tail_offset = self._plan_pixels(header, index)
        for tag in _ENCAPSULATION_ONLY:
            if tag in header:
                del header[tag]
        if src.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN:
            _swap_words(header)
        charset = header.get("SpecificCharacterSet")
        charset = [str(c) for c in charset] if isinstance(charset, MultiValue) else str(charset or "ISO_IR 6")
        if tail_offset is not None and tail_offset < src.size:
            self._tail = self._encode_tail(tail_offset, charset)
        self._head = self._encode_header(header)
        self.length = len(self._head) + len(self._pixel_head) + self._pixel_length + len(self._tail)

    def _plan_pixels(self, header: Dataset, index: FrameIndex) -> int:
        """Choose how the pixel data is produced, write its element header, set the Image
        Pixel attributes of ``header`` (the copy written out); return the offset of the first
        element after the stored pixel data."""
        src = self._source
        what = f"instance {self.record.sop_uid}"
        bits_allocated = int(header.get("BitsAllocated") or 0)
        samples = int(header.get("SamplesPerPixel") or 1)
        frames = index.number_of_frames
        if src.transfer_syntax in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN) \
                and not index.encapsulated:
            # Native little endian: the stored value is already the target's value
            self._mode = "copy"
            length = index.pixel_data_length or 0
            self._pixel_length = length + length % 2
            tail = index.pixel_data_offset + length
            vr = index.pixel_data_vr if index.pixel_data_vr in ("OB", "OW", "OF", "OD") else None
        else:
            self._mode = "frames"
            rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
            frame_bits = rows * columns * samples * bits_allocated
            if not index.encapsulated and header.get("PhotometricInterpretation") == "YBR_FULL_422":
                frame_bits = frame_bits // 3 * 2  # stays subsampled (PS3.3 C.7.6.3.1.2)
            if bits_allocated == 1 and frame_bits % 8:
                self._bits = _BitConcatenator(frame_bits)
            self._frame_length = -(-frame_bits // 8)
            total = -(-(frame_bits * frames) // 8)
            self._pixel_length = total + total % 2
            self._check_length()
            if index.encapsulated and len(index.frames) < frames:
                raise TranscodeError(
                    f"{what} cannot be decoded to {_name(self.target)}: its encapsulated pixel data "
                    f"holds {len(index.frames)} of its {frames} frames")
            try:
                first = frame_as_explicit_le(src.fh, src.header, index, 1)
            except PixelDataError as exc:
                raise TranscodeError(f"{what} cannot be decoded to {_name(self.target)}: {exc}") from None
            if len(first.data) != self._frame_length:
                raise TranscodeError(
                    f"{what} cannot be decoded to {_name(self.target)}: frame 1 decodes to "
                    f"{len(first.data)} bytes, its header (Rows {rows}, Columns {columns}, Samples per "
                    f"Pixel {samples}, Bits Allocated {bits_allocated}) says {self._frame_length}")
            self._first = first.data
            # The Image Pixel attributes of what the frames now are (YBR decoded to RGB...)
            header.PhotometricInterpretation = first.photometric_interpretation
            if samples > 1 and first.planar_configuration is not None:
                header.PlanarConfiguration = first.planar_configuration
            tail = _pixel_data_end(src.fh, index, src.size)
            vr = None
        if vr is None:
            vr = {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(index.pixel_data_tag,
                                                          "OB" if bits_allocated <= 8 else "OW")
        self._check_length()
        tag = index.pixel_data_tag
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if self.implicit:
            head += struct.pack("<L", self._pixel_length)
        else:
            head += vr.encode("ascii") + b"\0\0" + struct.pack("<L", self._pixel_length)
        self._pixel_head = head
        return tail

    def _check_length(self) -> None:
        if self._pixel_length > MAX_VALUE_LENGTH:
            raise TranscodeError(
                f"instance {self.record.sop_uid} cannot be sent as {_name(self.target)}: its native "
                f"pixel data would be {self._pixel_length} bytes, more than a Pixel Data element can "
                "hold (4 GiB - 2); retrieve it as stored (transfer-syntax=*)")

    def _encode_header(self, header: Dataset) -> bytes:
        meta = FileMetaDataset()
        for elem in header.file_meta:
            if elem.tag != 0x00020000:
                meta.add(elem)
        meta.TransferSyntaxUID = self.target
        if not meta.get("MediaStorageSOPClassUID") and header.get("SOPClassUID"):
            meta.MediaStorageSOPClassUID = header.SOPClassUID
        if not meta.get("MediaStorageSOPInstanceUID") and header.get("SOPInstanceUID"):
            meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
        out = DicomBytesIO()
        # A zero preamble: a stored one may be a TIFF header pointing into the old layout
        out.write(b"\0" * 128 + b"DICM")
        try:
            write_file_meta_info(out, meta, enforce_standard=True)
        except (ValueError, AttributeError) as exc:
            raise TranscodeError(f"instance {self.record.sop_uid}: file meta information: {exc}") from None
        out.is_little_endian, out.is_implicit_VR = True, self.implicit
        try:
            write_dataset(out, header)
        except Exception as exc:  # pydicom raises many types for values it cannot encode
            raise TranscodeError(f"instance {self.record.sop_uid}: its header cannot be encoded as "
                                 f"{_name(self.target)}: {exc}") from None
        return out.getvalue()

    def _encode_tail(self, offset: int, charset: str | list[str]) -> bytes:
        """The elements stored after the pixel data, re-encoded (usually none, or padding)."""
        src = self._source
        implicit, little = _encoding(src.transfer_syntax)
        src.fh.seek(offset)
        raw = src.fh.read(src.size - offset)
        try:
            tail = read_dataset(io.BytesIO(raw), implicit, little, parent_encoding=charset)
        except Exception as exc:
            logger.warning("instance %s: the %d bytes after the pixel data cannot be parsed (%s): left out",
                           self.record.sop_uid, len(raw), exc)
            return b""
        if not little:
            _swap_words(tail)
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, self.implicit
        write_dataset(out, tail, parent_encoding=charset)
        return out.getvalue()

    # --- streaming --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a TranscodedStream can be iterated once")
        self._started = True
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in self._produce():
                if chunk:
                    sent += len(chunk)
                    yield chunk
            if sent != self.length:  # a bug: the announced length was wrong
                raise RuntimeError(f"instance {self.record.sop_uid}: produced {sent} bytes, "
                                   f"announced {self.length}")
        finally:
            self.close()

    def _produce(self) -> Iterator[bytes]:
        yield self._head + self._pixel_head
        if self._mode == "copy":
            yield from self._copy()
        elif self._mode == "frames":
            yield from self._frames()
        yield self._tail

    def _copy(self) -> Iterator[bytes]:
        src, index = self._source, self._source.index
        assert index is not None
        remaining = index.pixel_data_length or 0
        src.fh.seek(index.pixel_data_offset)
        while remaining > 0:
            chunk = src.fh.read(min(self._chunk, remaining))
            if not chunk:
                raise TranscodeError(f"instance {self.record.sop_uid}: the stored file ends "
                                     f"{remaining} bytes before the end of its pixel data")
            remaining -= len(chunk)
            yield chunk
        if (index.pixel_data_length or 0) % 2:
            yield b"\0"

    def _frames(self) -> Iterator[bytes]:
        src, index = self._source, self._source.index
        assert index is not None
        produced = 0
        for number in range(1, index.number_of_frames + 1):
            if number == 1:
                data, self._first = self._first, None
            else:
                try:
                    data = frame_as_explicit_le(src.fh, src.header, index, number).data
                except PixelDataError as exc:
                    logger.error("instance %s: frame %d cannot be decoded while streaming it as %s: %s",
                                 self.record.sop_uid, number, _name(self.target), exc)
                    raise TranscodeError(f"instance {self.record.sop_uid}: frame {number}: {exc}") from None
            assert data is not None
            if len(data) != self._frame_length:
                raise TranscodeError(f"instance {self.record.sop_uid}: frame {number} decodes to "
                                     f"{len(data)} bytes, frame 1 to {self._frame_length}")
            if self._bits is not None:
                data = self._bits.add(data)
            produced += len(data)
            yield data
        if self._bits is not None:
            rest = self._bits.flush()
            produced += len(rest)
            yield rest
        if produced % 2:
            yield b"\0"

    def close(self) -> None:
        self._source.close()


class TranscodeService:
    """Stored instances re-encoded as Explicit or Implicit VR Little Endian, streamed.

    ``retrieve`` is the :class:`~gateway.services.retrieve.RetrieveService` that opens
    blobs; ``spool_dir`` is where deflated instances are inflated and :meth:`to_file` writes
    (default: the blob store's staging folder, else the system's temporary folder).
    """

    def __init__(self, retrieve: "RetrieveService", *, spool_dir: str | Path | None = None,
                 chunk_size: int = CHUNK):
        self.retrieve = retrieve
        self._spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.chunk_size = chunk_size

    # --- what can be produced ----------------------------------------------------------------
    def problem(self, record: "InstanceRecord", target: str) -> str | None:
        """Why ``record`` cannot be produced in ``target``, or None when it can (judged from
        the record alone: no blob is read)."""
        if target not in TARGET_SYNTAXES:
            return f"{_name(target)} is not a syntax instances are transcoded to"
        source = str(record.transfer_syntax)
        if not UID(source).is_transfer_syntax:
            return f"its stored transfer syntax {source} is not a known transfer syntax"
        if record.frame_index is None:
            return None  # no pixel data: only the header is re-encoded
        try:
            check_decodable(source)
        except PixelDataError as exc:
            return str(exc)
        return None

    def can_produce(self, record: "InstanceRecord", target: str) -> bool:
        return self.problem(record, target) is None

    def check(self, record: "InstanceRecord", target: str) -> None:
        """Raise :class:`TranscodeError` naming the instance and the cause when it cannot be
        produced in ``target``."""
        problem = self.problem(record, target)
        if problem is not None:
            raise TranscodeError(f"instance {record.sop_uid} cannot be decoded to {_name(target)}: {problem}")

    # --- producing ---------------------------------------------------------------------------
    def stream(self, record: "InstanceRecord", target: str) -> TranscodedStream:
        """The instance as a Part 10 file in ``target``: an iterable of chunks with its
        exact :attr:`~TranscodedStream.length`. Raises :class:`TranscodeError` (before any
        byte) when it cannot be produced."""
        self.check(record, target)
        stream = TranscodedStream(self, record, target)
        logger.debug("instance %s transcoded from %s to %s (%s, %d bytes)", record.sop_uid,
                    _name(stream._source.stored_syntax), _name(target), stream._mode, stream.length)
        return stream

    @contextlib.contextmanager
    def to_file(self, record: "InstanceRecord", target: str,
                directory: str | Path | None = None) -> Iterator[Path]:
        """The transcoded instance written, streaming, to a temporary Part 10 file; the path
        is valid inside the ``with`` block and the file removed after it (for pynetdicom,
        which sends a file by path in PDU-sized pieces)."""
        stream = self.stream(record, target)
        folder = Path(directory) if directory is not None else self.spool_dir()
        fd, name = tempfile.mkstemp(prefix="transcode-", suffix=".dcm", dir=folder)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in stream:
                    out.write(chunk)
            yield path
        finally:
            stream.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def spool_dir(self) -> Path:
        if self._spool_dir is not None:
            return self._spool_dir
        staging = getattr(getattr(self.retrieve, "blobs", None), "staging_dir", None)
        if callable(staging):
            with contextlib.suppress(Exception):
                folder = Path(staging())
                folder.mkdir(parents=True, exist_ok=True)
                return folder
        return Path(tempfile.gettempdir())

    # --- opening the stored instance -----------------------------------------------------------
    def _open(self, record: "InstanceRecord") -> _Source:
        fh = self.retrieve.open(record)
        source = None
        try:
            meta = _read_meta(fh, record)
            stored = str(meta.get("TransferSyntaxUID", record.transfer_syntax))
            if stored == DEFLATED_TRANSFER_SYNTAX:
                source = self._inflated(fh, meta, record)
                source.closers.append(fh.close)
                return source
            header = _with_actual_encoding(self.retrieve.read_header(fh))
            size = _size(fh)
            index: FrameIndex | None
            if record.frame_index:
                index = FrameIndex.from_json(record.frame_index)
            else:  # no pixel data when ingested; look again, it costs a walk of element headers
                index = _index(fh, header, record)
            source = _Source(fh, header, index, stored, stored, size, [fh.close])
            return source
        except GatewayError:
            if source is None:
                fh.close()
            raise
        except (PixelDataError, ValueError, OSError, EOFError, struct.error) as exc:
            if source is None:
                fh.close()
            raise TranscodeError(f"instance {record.sop_uid} cannot be read for transcoding: {exc}") from None

    def _inflated(self, fh: BinaryIO, meta: FileMetaDataset, record: "InstanceRecord") -> _Source:
        """Deflated data sets have no frame positions: inflate the data set once, streaming,
        into a spool file (preamble, the file meta as Explicit VR Little Endian, the inflated
        data set) and read that like any Explicit VR Little Endian instance."""
        spool = tempfile.TemporaryFile(prefix="inflate-", suffix=".dcm", dir=self.spool_dir())
        try:
            inflated_meta = FileMetaDataset()
            for elem in meta:
                if elem.tag != 0x00020000:
                    inflated_meta.add(elem)
            inflated_meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
            head = DicomBytesIO()
            head.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(head, inflated_meta, enforce_standard=False)
            spool.write(head.getvalue())
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            fh.seek(dicom_headers.dataset_offset(fh))
            while chunk := fh.read(self.chunk_size):
                data = inflater.decompress(chunk, self.chunk_size)
                spool.write(data)
                while inflater.unconsumed_tail:
                    spool.write(inflater.decompress(inflater.unconsumed_tail, self.chunk_size))
                if inflater.eof:
                    break
            spool.write(inflater.flush())
            spool.flush()
            logger.info("instance %s is deflated: inflated once into a %d byte spool file (its frames have "
                        "no position in the stored file)", record.sop_uid, spool.tell())
            header = _with_actual_encoding(dicom_headers.read_header(_rewound(spool)))
            index = _index(spool, header, record)
            return _Source(spool, header, index, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_TRANSFER_SYNTAX,
                           _size(spool), [spool.close])
        except zlib.error as exc:
            spool.close()
            raise TranscodeError(f"instance {record.sop_uid}: its deflated data set cannot be inflated: {exc}") \
                from None
        except BaseException:
            spool.close()
            raise


# --- helpers --------------------------------------------------------------------------------

def _read_meta(fh: BinaryIO, record: "InstanceRecord") -> FileMetaDataset:
    """The file meta group only (dcmread would inflate a deflated data set whole)."""
    try:
        end = dicom_headers.dataset_offset(fh)
        fh.seek(132)
        raw = fh.read(max(0, end - 132))
        return FileMetaDataset(read_dataset(io.BytesIO(raw), False, True))
    except Exception as exc:  # pydicom raises many types
        raise TranscodeError(f"instance {record.sop_uid}: file meta information cannot be read: {exc}") from None


def _shallow_copy(header: Dataset) -> Dataset:
    """A data set of the same top-level elements, to change without changing ``header``: raw
    elements are immutable tuples (replaced, not changed, when the copy converts them), the
    others are copied (their values shared)."""
    out = Dataset()
    for tag in header.keys():
        elem = header.get_item(tag)
        out[tag] = copy.copy(elem) if isinstance(elem, DataElement) else elem
    out.file_meta = header.file_meta
    out.set_original_encoding(*header.original_encoding, header.original_character_set)
    return out


def _with_actual_encoding(header: Dataset) -> Dataset:
    """pydicom reads a data set whose VR encoding contradicts its transfer syntax with the
    encoding it finds, but records the transfer syntax's as the original one; writing it
    would then copy implicit VR raw elements into explicit VR output. Record the real one."""
    for tag in header.keys():
        raw = header.get_item(tag)
        implicit = getattr(raw, "is_implicit_VR", None)
        if implicit is not None:
            if (implicit, raw.is_little_endian) != tuple(header.original_encoding):
                header.set_original_encoding(implicit, raw.is_little_endian)
            break
    return header


def _rewound(fh: BinaryIO) -> BinaryIO:
    fh.seek(0)
    return fh


def _size(fh: BinaryIO) -> int:
    fh.seek(0, os.SEEK_END)
    return fh.tell()


def _index(fh: BinaryIO, header: Dataset, record: "InstanceRecord") -> FrameIndex | None:
    fh.seek(0)
    try:
        return index_pixel_data(fh, header)
    except PixelDataError as exc:
        raise TranscodeError(f"instance {record.sop_uid}: its pixel data cannot be read: {exc}") from None


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    uid = UID(transfer_syntax)
    return bool(uid.is_implicit_VR), bool(uid.is_little_endian)


def _pixel_data_end(fh: BinaryIO, index: FrameIndex, size: int) -> int:
    """Offset just after the stored pixel data element.

    Native or defined length: its value's end. Encapsulated: the item headers after the last
    indexed fragment are walked to the sequence delimiter (usually the very next item; a
    frame's fragments may be followed by fragments no frame was given).
    """
    if index.pixel_data_length is not None:
        return index.pixel_data_offset + index.pixel_data_length
    if not index.frames or not index.frames[-1]:
        return size
    offset = index.frames[-1][-1][0] - 8  # the item header of the last indexed fragment
    while offset + 8 <= size:
        fh.seek(offset)
        head = fh.read(8)
        if len(head) < 8:
            break
        group, elem, length = struct.unpack("<HHL", head)
        tag = group << 16 | elem
        if tag == _SEQUENCE_DELIMITER:
            return offset + 8
        if tag != _ITEM:
            logger.warning("unexpected tag (%04X,%04X) at %d in encapsulated pixel data", group, elem, offset)
            return offset
        offset += 8 + length
    return min(offset, size)  # no sequence delimiter (tolerated by the indexer too)


def _swap_words(ds: Dataset) -> None:
    """Big endian OW/OL/OF/OD/OV values as little endian (pydicom writes these bytes as read)."""
    for elem in ds.iterall():
        size = _WORD_SIZES.get(elem.VR)
        value = elem.value
        if size and isinstance(value, (bytes, bytearray)) and value and len(value) % size == 0:
            elem.value = np.frombuffer(value, f">u{size}").astype(f"<u{size}").tobytes()
