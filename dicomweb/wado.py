"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed."""
from __future__ import annotations

import contextlib
import logging
import zlib
from typing import Iterable, Iterator

import pydicom
from flask import Response, request
from flask_smorest import Blueprint

from auth.access import DOWNLOAD
from dicomweb.common import PREFIX, base_url, json_array_stream, require_json_accept
from dicomweb.multipart import iter_multipart, new_boundary
from dicomweb.negotiation import Choice, choose_dicom, choose_frames
from gateway.errors import BadRequest, NotFound
from gateway.headers import BASE_PLACEHOLDER
from gateway.imaging import frame_media_type
from gateway.web import principal, services
from storage.records import InstanceRecord

logger = logging.getLogger(__name__)

blp = Blueprint("wado", __name__, url_prefix=PREFIX, description="WADO-RS: retrieve")

_INSTANCE = "/studies/<study>/series/<series>/instances/<sop>"


def multipart_response(parts: Iterable[tuple[dict, Iterable[bytes] | bytes]], part_type: str) -> Response:
    boundary = new_boundary()
    response = Response(iter_multipart(parts, boundary), direct_passthrough=True)
    response.headers["Content-Type"] = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return response


def gzip_if_accepted(chunks: Iterable[bytes]) -> tuple[Iterable[bytes], dict]:
    """Compress a streamed JSON body when the client accepts gzip (browsers and OHIF do)."""
    if "gzip" not in request.headers.get("Accept-Encoding", ""):
        return chunks, {}

    def compressed() -> Iterator[bytes]:
        z = zlib.compressobj(6, zlib.DEFLATED, 31)
        for chunk in chunks:
            if out := z.compress(chunk):
                yield out
        yield z.flush()

    return compressed(), {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}


# --- instances ----------------------------------------------------------------------

def _transcoded(transcoder, record: InstanceRecord, target: str) -> Iterator[bytes]:
    """The instance re-encoded as Explicit or Implicit VR Little Endian, streamed frame by
    frame (opened only when the multipart body reaches it)."""
    yield from transcoder.stream(record, target)


def _instance_parts(retrieve, transcoder, records: list[InstanceRecord], choice: Choice):
    """Runs while the response streams, outside the app context: gets its services passed in."""
    for record in records:
        if choice.transfer_syntax in (None, record.transfer_syntax):
            headers = {"Content-Type": f"application/dicom; transfer-syntax={record.transfer_syntax}"}
            yield headers, retrieve.iter_bytes(record)
        else:
            headers = {"Content-Type": f"application/dicom; transfer-syntax={choice.transfer_syntax}"}
            yield headers, _transcoded(transcoder, record, choice.transfer_syntax)


def retrieve(study: str, series: str | None = None, sop: str | None = None) -> Response:
    retrieve_service = services().retrieve
    records = retrieve_service.instances(principal(), study, series, sop, need=DOWNLOAD)
    choice = choose_dicom({r.transfer_syntax for r in records}, single_allowed=sop is not None)
    transcoder = services().transcode
    converted = [r for r in records if choice.transfer_syntax not in (None, r.transfer_syntax)]
    for record in converted:  # from the records alone: 400 before the first byte, not a cut body
        transcoder.check(record, choice.transfer_syntax)
    if choice.multipart:
        return multipart_response(_instance_parts(retrieve_service, transcoder, records, choice),
                                  "application/dicom")
    record = records[0]
    if not converted:
        headers, body = next(_instance_parts(retrieve_service, transcoder, records, choice))
        return Response(body, headers=headers, direct_passthrough=True)
    # Opened, header read and first frame decoded now: a failure is still an error response
    stream = transcoder.stream(record, choice.transfer_syntax)
    headers = {"Content-Type": f"application/dicom; transfer-syntax={choice.transfer_syntax}",
               "Content-Length": str(stream.length)}
    return Response(stream, headers=headers, direct_passthrough=True)


@blp.route("/studies/<study>", methods=["GET"])
@blp.doc(summary="Retrieve a study's instances", description="multipart/related; type=\"application/dicom\"; "
         "transfer-syntax=* returns the stored bytes, default Explicit VR Little Endian.")
def retrieve_study(study: str):
    return retrieve(study)


@blp.route("/studies/<study>/series/<series>", methods=["GET"])
@blp.doc(summary="Retrieve a series' instances")
def retrieve_series(study: str, series: str):
    return retrieve(study, series)


@blp.route(_INSTANCE, methods=["GET"])
@blp.doc(summary="Retrieve an instance")
def retrieve_instance(study: str, series: str, sop: str):
    return retrieve(study, series, sop)


# --- metadata -----------------------------------------------------------------------

def metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
    media_type = require_json_accept()
    headers = services().retrieve.metadata(principal(), study, series, sop)
    body, extra = gzip_if_accepted(json_array_stream(headers, replace=(BASE_PLACEHOLDER, base_url())))
    return Response(body, mimetype=media_type, headers=extra, direct_passthrough=True)


@blp.route("/studies/<study>/metadata", methods=["GET"])
@blp.doc(summary="Metadata of a study's instances (DICOM JSON, bulk data as BulkDataURI)")
def study_metadata(study: str):
    return metadata(study)


@blp.route("/studies/<study>/series/<series>/metadata", methods=["GET"])
@blp.doc(summary="Metadata of a series' instances")
def series_metadata(study: str, series: str):
    return metadata(study, series)


@blp.route(_INSTANCE + "/metadata", methods=["GET"])
@blp.doc(summary="Metadata of an instance")
def instance_metadata(study: str, series: str, sop: str):
    return metadata(study, series, sop)


# --- frames and bulk data -----------------------------------------------------------

def parse_frame_list(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise BadRequest(f"frame list {text!r} must be comma-separated positive integers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise BadRequest(f"frame list {text!r} must be comma-separated positive integers")
    return numbers


def _frames_response(record: InstanceRecord, numbers: list[int]) -> Response:
    stored_type = frame_media_type(record.transfer_syntax)
    choice = choose_frames(record.transfer_syntax, stored_type, single_allowed=len(numbers) == 1)
    as_stored = choice.transfer_syntax is None or choice.transfer_syntax == record.transfer_syntax
    frames = services().retrieve.frames(record, numbers, as_stored=as_stored)
    parts = []
    for frame in frames:
        part_type = choice.part_type if not as_stored else (
            stored_type if choice.part_type != "application/octet-stream" else "application/octet-stream")
        headers = {"Content-Type": f"{part_type}; transfer-syntax={frame.transfer_syntax}"}
        parts.append((headers, frame.data))
    if not choice.multipart:
        headers, data = parts[0]
        return Response(data, headers=headers)
    return multipart_response(parts, choice.part_type)


@blp.route(_INSTANCE + "/frames/<frame_list>", methods=["GET"])
@blp.doc(summary="Frames of an instance", description="Only the frames' bytes are read; "
         "transfer-syntax=* returns them as stored, default uncompressed.")
def instance_frames(study: str, series: str, sop: str, frame_list: str):
    numbers = parse_frame_list(frame_list)
    record = services().retrieve.instances(principal(), study, series, sop)[0]
    return _frames_response(record, numbers)


def _walk(ds: pydicom.Dataset, path: str):
    parts = path.split("/")
    node = ds
    for i, part in enumerate(parts):
        if i % 2 == 1:
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise NotFound(f"bulk data path {path!r} does not exist") from None
            continue
        try:
            tag = int(part, 16)
        except ValueError:
            raise BadRequest(f"bulk data path {path!r} is not tag[/item/tag...]") from None
        if tag not in node:
            raise NotFound(f"bulk data {path!r} does not exist in this instance")
        node = node[tag]
        if i < len(parts) - 1:
            node = node.value
    return node


@blp.route(_INSTANCE + "/bulk/<path:tag_path>", methods=["GET"])
@blp.doc(summary="Bulk data of an instance by BulkDataURI")
def instance_bulk(study: str, series: str, sop: str, tag_path: str):
    record = services().retrieve.instances(principal(), study, series, sop)[0]
    if tag_path.upper() in ("7FE00010", "7FE00008", "7FE00009"):
        count = record.number_of_frames or 1
        return _frames_response(record, list(range(1, count + 1)))
    retrieve = services().retrieve
    with contextlib.closing(retrieve.open(record)) as fh:
        element = _walk(retrieve.read_header(fh), tag_path)
        value = element.value if hasattr(element, "value") else None
        if not isinstance(value, (bytes, bytearray)):
            raise NotFound(f"{tag_path} is not bulk data")
        data = bytes(value)
    return multipart_response([({"Content-Type": "application/octet-stream"}, data)], "application/octet-stream")

