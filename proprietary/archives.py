"""Zip downloads of whole studies and series: ``GET /api/v1/studies/{study}[/series/{series}]/archive``.

Stored entries (the default) have an exact ``Content-Length``, a strong ``ETag`` and byte
ranges (RFC 9110 section 14): one range answers 206 with ``Content-Range``; ``If-Range`` with
another ETag (or a date) gives the whole archive; a range that starts beyond the end answers 416
with ``Content-Range: bytes */N``; several ranges in one request get the whole archive (200, as
RFC 9110 allows): clients fetching in parallel send one range per request. A resumed
download (``curl -C -``) is the same bytes as an uninterrupted one. ``compress=deflate``
streams deflated entries (no length, no ranges). The archive itself (access, names, slices,
layout) is :class:`gateway.services.archives.ArchiveService`'s.
"""
from __future__ import annotations

import re

from flask import Response, jsonify, request
from flask_smorest import Blueprint

from gateway.web import error_body, principal, services
from proprietary.common import QUERY
from proprietary.schemas import ArchiveQuery

blp = Blueprint("archives", __name__, url_prefix="/api/v1/studies",
                description="Zip downloads of whole studies and series: streamed, resumable, ranges")

_RANGE_SPEC = re.compile(r"^(\d*)-(\d*)$")
UNSATISFIABLE = "unsatisfiable"

_ZIP = {"description": "the zip archive (stored entries: also 206 with one range)",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}
_DOC = dict(
    parameters=[
        {"name": "Range", "in": "header", "schema": {"type": "string", "example": "bytes=1000000-"},
         "description": "one byte range (stored archives); several ranges get the whole archive"},
        {"name": "If-Range", "in": "header", "schema": {"type": "string"},
         "description": "the ETag of the archive a resumed download started with: another one gets the whole "
                        "archive"},
        {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
    ],
    responses={200: _ZIP, 206: _ZIP,
               304: {"description": "If-None-Match holds the archive's ETag"},
               400: {"description": "a bad parameter (slices on a study, a slice range outside the series)"},
               404: {"description": "no such study (series) that this principal may see"},
               416: {"description": "the range starts beyond the end; Content-Range: bytes */length"}},
)


def byte_range(header: str | None, length: int) -> tuple[int, int] | str | None:
    """(start, stop) of a single byte range of a representation of ``length`` bytes,
    :data:`UNSATISFIABLE`, or None to send the whole: no header, another unit, a malformed
    one (ignored, RFC 9110 14.2), or several ranges."""
    if not header:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in specs.split(",") if p.strip()]
    matches = [_RANGE_SPEC.match(p) for p in parts]
    if not parts or not all(matches) or any(m.group(1) == m.group(2) == "" for m in matches):
        return None
    for m in matches:
        if m.group(1) and m.group(2) and int(m.group(2)) < int(m.group(1)):
            return None  # an invalid range-spec makes the whole header invalid
    if len(matches) > 1:
        return None
    first, last = matches[0].groups()
    if not first:  # the last N bytes
        suffix = int(last)
        return UNSATISFIABLE if suffix == 0 else (max(0, length - suffix), length)
    start = int(first)
    if start >= length:
        return UNSATISFIABLE
    return start, min(length, int(last) + 1) if last else length


def _if_range_holds(etag: str) -> bool:
    """No If-Range, or one holding this ETag (strong comparison: a weak tag or a date never
    matches, since the archive has no Last-Modified)."""
    value = request.headers.get("If-Range")
    return value is None or value.strip() == f'"{etag}"'


def download(study: str, series: str | None, args: dict) -> Response:
    archive = services().archives.archive(principal(), study, series, slices=args.get("slices"),
                                          compress=args["compress"])
    headers = {"Content-Type": "application/zip", "Content-Disposition": f'attachment; filename="{archive.filename}"',
               "Cache-Control": "private"}
    if archive.compressed:
        headers["Accept-Ranges"] = "none"
        return Response(archive.iter_deflated(), headers=headers, direct_passthrough=True)
    etag, length = archive.etag, archive.length
    headers.update({"ETag": f'"{etag}"', "Accept-Ranges": "bytes"})
    if request.if_none_match.contains_weak(etag):
        return Response(status=304, headers={k: v for k, v in headers.items() if k in ("ETag", "Cache-Control")})
    wanted = byte_range(request.headers.get("Range"), length) if _if_range_holds(etag) else None
    if wanted == UNSATISFIABLE:
        response = jsonify(error_body(416, f"the range {request.headers.get('Range')!r} is outside the archive's "
                                           f"{length} bytes"))
        response.status_code = 416
        response.headers.update({"Content-Range": f"bytes */{length}", "ETag": f'"{etag}"', "Accept-Ranges": "bytes"})
        return response
    if wanted is None:
        headers["Content-Length"] = str(length)
        return Response(archive.iter_bytes(), headers=headers, direct_passthrough=True)
    start, stop = wanted
    headers.update({"Content-Length": str(stop - start), "Content-Range": f"bytes {start}-{stop - 1}/{length}"})
    return Response(archive.iter_bytes(start, stop), status=206, headers=headers, direct_passthrough=True)


@blp.route("/<study>/archive", methods=["GET"])
@blp.arguments(ArchiveQuery, **QUERY)
@blp.doc(summary="Download a study as a zip",
         description="Every stored instance, byte for byte, as {PatientID}/{StudyDate}_{StudyUID}/"
                     "{SeriesNumber}_{SeriesUID}/{InstanceNumber:04d}.dcm. Needs the right to download the originals "
                     "(own clinic, or a share with download). Stored entries: Content-Length, ETag, Range/If-Range "
                     "(resume, parallel ranges). compress=deflate: streamed, no length, no ranges. slices is for "
                     "series archives (400 here).", **_DOC)
def study_archive(args: dict, study: str):
    return download(study, None, args)


@blp.route("/<study>/series/<series>/archive", methods=["GET"])
@blp.arguments(ArchiveQuery, **QUERY)
@blp.doc(summary="Download a series (or slices of it) as a zip",
         description="As the study archive, for one series. slices=a-b: the instances at positions a to b along "
                     "the slice axis (ImagePositionPatient on the normal of ImageOrientationPatient; InstanceNumber "
                     "when positions are missing), 1-based and inclusive; outside the series: 400 naming the valid "
                     "range.", **_DOC)
def series_archive(args: dict, study: str, series: str):
    return download(study, series, args)
