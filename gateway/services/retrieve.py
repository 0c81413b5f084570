"""The one retrieve path: WADO-RS, C-MOVE/C-GET and zip downloads read instances through here."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import pydicom

from auth.base import Principal
from gateway.errors import BackendUnavailable, BadRequest, NotFound
from storage.base import BlobStore, IndexStore, InstanceRecord
from storage.errors import ObjectNotFound, StorageError

logger = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024


@dataclass
class Frame:
    data: bytes
    transfer_syntax: str  # of ``data``: the stored syntax, or Explicit VR Little Endian when decoded
    photometric: str | None = None


def _what(study: str, series: str | None, sop: str | None) -> str:
    if sop:
        return f"instance {sop} in series {series} of study {study}"
    if series:
        return f"series {series} of study {study}"
    return f"study {study}"


class RetrieveService:
    def __init__(self, blobs: BlobStore, index: IndexStore):
        self.blobs = blobs
        self.index = index

    def instances(self, principal: Principal, study: str, series: str | None = None,
                  sop: str | None = None) -> list[InstanceRecord]:
        try:
            records = self.index.instances(principal.clinic_id, study, series, sop)
        except StorageError as exc:
            raise BackendUnavailable(f"index read failed: {exc}") from exc
        if not records:
            raise NotFound(f"{_what(study, series, sop)} not found")
        return records

    def metadata(self, principal: Principal, study: str, series: str | None = None,
                 sop: str | None = None) -> Iterator[str]:
        """Each instance's DICOM JSON text, from the index only (no blob is read)."""
        try:
            headers = self.index.instance_headers(principal.clinic_id, study, series, sop)
            first = next(headers, None)
        except StorageError as exc:
            raise BackendUnavailable(f"index read failed: {exc}") from exc
        if first is None:
            raise NotFound(f"{_what(study, series, sop)} not found")

        def all_headers() -> Iterator[str]:
            yield first
            yield from headers

        return all_headers()

    def open(self, record: InstanceRecord) -> BinaryIO:
        try:
            return self.blobs.open(record.blob_key)
        except ObjectNotFound:
            logger.error("blob %s of indexed instance %s is missing", record.blob_key, record.sop_uid)
            raise BackendUnavailable(f"stored file of instance {record.sop_uid} is missing") from None
        except StorageError as exc:
            raise BackendUnavailable(f"blob read failed: {exc}") from exc

    def iter_bytes(self, record: InstanceRecord) -> Iterator[bytes]:
        """The stored Part 10 bytes, in chunks."""
        with contextlib.closing(self.open(record)) as fh:
            while chunk := fh.read(READ_CHUNK):
                yield chunk

    def read_header(self, fh: BinaryIO) -> pydicom.Dataset:
        fh.seek(0)
        return pydicom.dcmread(fh, stop_before_pixels=True)

    def frames(self, record: InstanceRecord, numbers: list[int], *, as_stored: bool) -> list[Frame]:
        """Selected frames (1-based), as stored or as Explicit VR Little Endian pixel bytes."""
        from gateway.imaging import FrameIndex, PixelDataError, frame_as_explicit_le, read_stored_frame

        if not record.frame_index:
            raise NotFound(f"instance {record.sop_uid} has no pixel data")
        index = FrameIndex.from_json(record.frame_index)
        count = index.number_of_frames
        for n in numbers:
            if n < 1 or n > count:
                raise NotFound(f"frame {n} requested, instance {record.sop_uid} has {count} frame(s)")
        result = []
        with contextlib.closing(self.open(record)) as fh:
            header = None
            for n in numbers:
                try:
                    if as_stored and index.frames:
                        result.append(Frame(read_stored_frame(fh, index, n), index.transfer_syntax))
                        continue
                    header = header if header is not None else self.read_header(fh)
                    frame = frame_as_explicit_le(fh, header, index, n)
                    result.append(Frame(frame.data, "1.2.840.10008.1.2.1", frame.photometric_interpretation))
                except PixelDataError as exc:
                    raise BadRequest(str(exc)) from exc
        return result

    def decoded_frame(self, record: InstanceRecord, number: int):
        """(pixels as numpy array, header dataset) of one frame, for rendering."""
        from gateway.imaging import FrameIndex, PixelDataError, decode_frame

        if not record.frame_index:
            raise NotFound(f"instance {record.sop_uid} has no pixel data to render")
        index = FrameIndex.from_json(record.frame_index)
        if number < 1 or number > index.number_of_frames:
            raise NotFound(f"frame {number} requested, instance {record.sop_uid} has "
                           f"{index.number_of_frames} frame(s)")
        with contextlib.closing(self.open(record)) as fh:
            header = self.read_header(fh)
            try:
                return decode_frame(fh, header, index, number), header
            except PixelDataError as exc:
                raise BadRequest(str(exc)) from exc
