"""The one retrieve path: WADO-RS, C-MOVE/C-GET and zip downloads read instances through here."""
from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import pydicom

from auth.access import VIEW, Source
from auth.base import Principal
from gateway import headers
from gateway.errors import BackendUnavailable, BadRequest, NotFound
from gateway.imaging import (
    FrameIndex,
    PixelDataError,
    decode_frame,
    frame_as_explicit_le,
    read_stored_frame,
)
from storage.base import BlobStore, InstanceIndex
from storage.errors import ObjectNotFound, StorageError
from storage.records import InstanceRecord

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
    """Reads of stored instances, from the principal's own clinic or through a share.

    ``need`` is the share permission a read takes: ``view`` (metadata, frames, rendered,
    thumbnails, bulk data) or ``download`` (the original instances: WADO-RS retrieve,
    C-MOVE, C-GET). Where a study may be read from, the audit of the read and the 404 of a
    study the principal cannot see are :meth:`auth.access.AccessControl.find`'s.
    """

    def __init__(self, blobs: BlobStore, index: InstanceIndex, *, access):
        self.blobs = blobs
        self.index = index
        self.access = access

    def instances(self, principal: Principal, study: str, series: str | None = None,
                  sop: str | None = None, *, need: str = VIEW) -> list[InstanceRecord]:
        def lookup(source: Source) -> list[InstanceRecord]:
            try:
                records = self.index.instances(source.clinic_id, study, series, sop)
            except StorageError as exc:
                raise BackendUnavailable(f"index read failed: {exc}") from exc
            return [r for r in records if source.allows_series(r.series_uid)]

        return self.access.find(principal, study, series, sop, need, lookup, what=_what(study, series, sop))

    def metadata(self, principal: Principal, study: str, series: str | None = None,
                 sop: str | None = None) -> Iterator[str]:
        """Each instance's DICOM JSON text, from the index only (no blob is read)."""
        def lookup(source: Source) -> Iterator[str] | None:
            if series is not None and not source.allows_series(series):
                return None
            wanted = [series] if source.series is None or series is not None else sorted(source.series)
            try:
                parts = [self.index.instance_headers(source.clinic_id, study, s, sop) for s in wanted]
                headers = (h for part in parts for h in part)
                first = next(headers, None)
            except StorageError as exc:
                raise BackendUnavailable(f"index read failed: {exc}") from exc
            if first is None:
                return None
            return itertools.chain((first,), headers)

        return self.access.find(principal, study, series, sop, VIEW, lookup, what=_what(study, series, sop))

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
        """The stored instance's header (the same reader ingest used)."""
        fh.seek(0)
        return headers.read_header(fh)

    def frames(self, record: InstanceRecord, numbers: list[int], *, as_stored: bool) -> list[Frame]:
        """Selected frames (1-based), as stored or as Explicit VR Little Endian pixel bytes."""
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
