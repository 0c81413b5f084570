"""Zip uploads of whole studies: ``/api/v1/uploads``.

``POST /api/v1/uploads`` opens an upload (JSON), or opens one and reads the zip that is its
body (``Content-Type: application/zip``) in one step; ``PUT .../{id}/archive`` sends an
archive into an open upload (again, with the entries still to send, after a dropped
connection); ``GET .../{id}`` lists every entry and its outcome; ``POST .../{id}/complete``
closes it; ``GET .../{id}/events`` follows it as Server-Sent Events, from any gateway
process. The work is :class:`gateway.services.uploads.UploadService`'s.
"""
from __future__ import annotations

import collections
import logging
import time

from flask import jsonify, request
from flask_smorest import Blueprint

from gateway.errors import UnsupportedMediaType
from gateway.services.uploads import PartResult
from gateway.times import iso
from gateway.web import error_body, principal, public_base, request_body, services
from proprietary.common import (
    BODY,
    EVENT_POLL,
    KEEP_ALIVE,
    QUERY,
    sse_event,
    sse_response,
)
from proprietary.schemas import (
    PartResultSchema,
    UploadCreateSchema,
    UploadListingSchema,
    UploadListQuery,
    UploadListSchema,
    UploadQueryArgs,
    UploadSchema,
)
from storage.records import Upload, UploadEntry

logger = logging.getLogger(__name__)

blp = Blueprint("uploads", __name__, url_prefix="/api/v1/uploads",
                description="Zip uploads of whole studies: streamed, resumable, with progress events")

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
# The body is read in pieces this small because a read that the dropped connection cuts short
# is lost whole (gunicorn raises instead of returning what it has): what a resuming client
# must send again is then at most the entry it was sending.
RESUME_GRAIN = 64 * 1024


def _is_zip_body() -> bool:
    return (request.mimetype or "") in ZIP_TYPES


def _counts(entries: list[UploadEntry]) -> dict[str, int]:
    counts = collections.Counter(e.outcome for e in entries)
    return {k: counts.get(k, 0) for k in ("stored", "duplicate", "replaced", "rejected", "skipped", "sidecar")}


def entry_json(entry: UploadEntry) -> dict:
    return {"name": entry.name, "part": entry.part, "size": entry.size, "outcome": entry.outcome,
            "sha256": entry.sha256, "sop_instance_uid": entry.sop_uid, "study_uid": entry.study_uid,
            "series_uid": entry.series_uid, "reason": entry.reason, "failure_reason": entry.code,
            "offset": entry.archive_offset}


def upload_json(upload: Upload, entries: list[UploadEntry] | None = None) -> dict:
    base = f"{public_base()}/api/v1/uploads/{upload.id}"
    body = {"id": upload.id, "status": upload.status, "clinic": upload.clinic_id, "created_by": upload.created_by,
            "created_at": iso(upload.created_at), "expires_at": iso(upload.expires_at),
            "completed_at": iso(upload.completed_at), "client": upload.client,
            "expected_study": upload.expected_study, "expected_instances": upload.expected_instances,
            "bytes_received": upload.bytes_received,
            "urls": {"self": base, "archive": base + "/archive", "events": base + "/events",
                     "complete": base + "/complete"}}
    if entries is not None:
        body["counts"] = _counts(entries)
    return body


def listing_json(upload: Upload, entries: list[UploadEntry], ended: dict[int, dict]) -> dict:
    """``ended``: the ``part`` events, by part number (a part without one is still being read)."""
    parts: dict[int, dict] = {n: {"part": n, "consumed": 0, "entries": 0, "state": "receiving"}
                              for n in range(1, upload.parts + 1)}
    for entry in entries:
        part = parts.setdefault(entry.part, {"part": entry.part, "consumed": 0, "entries": 0, "state": "receiving"})
        part["entries"] += 1
        part["consumed"] = max(part["consumed"], entry.archive_offset or 0)
    for number, event in ended.items():
        if number in parts:
            parts[number]["state"] = event.get("state", "done")
            if event.get("error"):
                parts[number]["error"] = event["error"]
    return {**upload_json(upload, entries), "parts": [parts[n] for n in sorted(parts)],
            "entries": [entry_json(e) for e in entries]}


def _part_response(result: PartResult, upload_id: str, status: int):
    """The outcome of one archive: 200/201, or the refusal naming the entry and the rule, with
    what the archive stored before it."""
    upload = services().uploads.get(principal(), upload_id)
    body = {"upload": upload_json(upload), "part": result.part, "bytes": result.bytes,
            "counts": _counts(result.entries), "entries": [entry_json(e) for e in result.entries]}
    if result.error is None:
        response = jsonify(PartResultSchema().dump(body))
        response.status_code = status
        return response
    error = result.error
    response = jsonify(error_body(error.http_status, error.message, rule=error.rule, entry=error.entry,
                                  upload=upload_id, part=result.part, counts=body["counts"], entries=body["entries"]))
    response.status_code = error.http_status
    return response


def _receive(upload_id: str, status: int):
    if not _is_zip_body():
        raise UnsupportedMediaType(f"Content-Type {request.mimetype or '(none)'} is not a zip archive: send "
                                   "application/zip")
    result = services().uploads.receive(principal(), upload_id, request_body(RESUME_GRAIN))
    return _part_response(result, upload_id, status)


@blp.route("", methods=["POST"])
@blp.arguments(UploadCreateSchema, required=False, **BODY)
@blp.arguments(UploadQueryArgs, **QUERY)
@blp.response(201, UploadSchema)
@blp.doc(summary="Open an upload (JSON), or open one and send its zip (application/zip body)",
         description="With a JSON body (all optional: study, expected_instances, client) the upload is opened and "
                     "its URLs answered. With Content-Type application/zip the body is read as an archive at once "
                     "(the same options as query parameters) and the answer is the archive's outcome, as for PUT "
                     "…/archive.")
def create_upload(body: dict, args: dict):
    zipped = _is_zip_body()
    if not zipped and not request.is_json and (request.content_length or request.headers.get("Transfer-Encoding")):
        raise UnsupportedMediaType(f"Content-Type {request.mimetype or '(none)'}: send JSON to open an upload, or "
                                   "application/zip to open one with its archive")
    options = args if zipped else (body or {})
    upload = services().uploads.create(principal(), expected_study=options.get("study"),
                                       expected_instances=options.get("expected_instances"),
                                       client=options.get("client") or request.headers.get("User-Agent"))
    if zipped:
        return _receive(upload.id, 201)
    return upload_json(upload, [])


@blp.route("", methods=["GET"])
@blp.arguments(UploadListQuery, **QUERY)
@blp.response(200, UploadListSchema)
@blp.doc(summary="The clinic's uploads, newest first")
def list_uploads(args: dict):
    found = services().uploads.list(principal(), status=args.get("status"), limit=args["limit"],
                                    offset=args["offset"])
    return {"uploads": [upload_json(u) for u in found]}


@blp.route("/<upload_id>", methods=["GET"])
@blp.response(200, UploadListingSchema)
@blp.doc(summary="An upload and every entry received, with its outcome",
         description="What a client reads to resume: the entries stored (their SOP Instance UIDs and sha256) and, "
                     "per archive, the bytes read up to its last entry done.")
def get_upload(upload_id: str):
    return _listing(upload_id)


def _listing(upload_id: str, upload: Upload | None = None) -> dict:
    uploads, who = services().uploads, principal()
    upload = upload or uploads.get(who, upload_id)
    ended = {e.data["part"]: e.data for e in uploads.events(who, upload_id) if e.type == "part"}
    return listing_json(upload, uploads.entries(who, upload_id), ended)


@blp.route("/<upload_id>/archive", methods=["PUT"])
@blp.response(200, PartResultSchema)
@blp.doc(summary="Send a zip archive into an open upload",
         description="Content-Length or chunked. Each DICOM entry is stored as soon as it is complete; other files "
                     "are skipped, .prj and .json sidecars kept. A hostile or broken archive answers 400 (413 for "
                     "size limits) naming the entry and the rule; what came before it stays stored. Re-sending an "
                     "entry is a duplicate, so a dropped connection is resumed with a new archive of the rest.",
         requestBody={"required": True, "content": {"application/zip": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}})
def put_archive(upload_id: str):
    return _receive(upload_id, 200)


@blp.route("/<upload_id>/complete", methods=["POST"])
@blp.response(200, UploadListingSchema)
@blp.doc(summary="Close an upload",
         description="Checks expected_instances (409 naming what is missing, the upload stays open), then fires the "
                     "upload's completion (previews and other jobs start). Completing twice is harmless.")
def complete_upload(upload_id: str):
    return _listing(upload_id, services().uploads.complete(principal(), upload_id))


@blp.route("/<upload_id>/events", methods=["GET"])
@blp.doc(summary="Follow an upload (Server-Sent Events)",
         description="text/event-stream: an event per entry done (entry: name, outcome, done, bytes), per archive "
                     "(part), then complete or expired, which ends the stream. Each event has an id: reconnect with "
                     "Last-Event-ID (or ?after=) to get only what came since. Any gateway process serves any upload.",
         parameters=[{"name": "after", "in": "query", "schema": {"type": "integer"},
                      "description": "only events with a greater id (as Last-Event-ID)"},
                     {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}}],
         responses={200: {"description": "the event stream", "content": {"text/event-stream": {}}}})
def upload_events(upload_id: str):
    uploads, who = services().uploads, principal()
    uploads.get(who, upload_id)  # 404 / 403 before the stream starts
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    after = int(raw) if raw.isdigit() else 0

    def stream():
        last, quiet = after, time.monotonic()
        while True:
            events = uploads.events(who, upload_id, after_id=last)
            for event in events:
                last = event.id
                yield sse_event(event.id, event.type, event.data)
                if event.type in ("complete", "expired"):
                    return
            if events:
                quiet = time.monotonic()
            elif uploads.get(who, upload_id).status != "open":  # closed, and nothing left to tell
                return
            elif time.monotonic() - quiet > KEEP_ALIVE:
                quiet = time.monotonic()
                yield ": still open\n\n"
            time.sleep(EVENT_POLL)

    return sse_response(stream())
