"""Previews and thumbnails of series: ``/api/v1/studies/{study}/series/{series}/preview`` and
``.../thumbnail``, their status and progress events, and versioned paths for signed (CDN) URLs.

The preview stream's format is :mod:`gateway.imaging.preview_format`'s (README "Preview
stream"). Everything served here is non-diagnostic (``X-Non-Diagnostic: true``). A preview
not made yet is a 404 whose body carries the job's state and progress (asking queues the job).
``.../preview/v/{version}``, ``.../thumbnail/v/{version}`` and ``.../snapshot/v/{version}`` answer only while ``version``
is the latest (404 after a new instance or a replaced one): signed URLs name them
(``POST /api/v1/signed-urls`` with ``derived``), so a CDN caches them by URL alone, and the
signature, checked on every request, stops them when the share that granted them is revoked.
"""
from __future__ import annotations

import contextlib
import time
from urllib.parse import urlencode

from flask import Response, jsonify, request
from flask_smorest import Blueprint

from auth.signing import SIGNATURE_PARAM
from gateway.errors import BadRequest
from gateway.imaging.preview_format import (
    MEDIA_TYPE,
    encode_header,
    read_header,
    subset_header,
)
from gateway.services.archives import parse_slices
from gateway.times import iso
from gateway.web import error_body, principal, public_base, services
from proprietary.archives import UNSATISFIABLE, byte_range
from proprietary.common import (
    BODY,
    EVENT_POLL,
    KEEP_ALIVE,
    QUERY,
    sse_event,
    sse_response,
)
from proprietary.schemas import (
    DerivedStatusSchema,
    MiniCtRequestSchema,
    MiniCtSchema,
    PreviewQuery,
    SnapshotQuery,
    ThumbnailQuery,
)

blp = Blueprint("previews", __name__, url_prefix="/api/v1/studies",
                description="Previews (JPEG 2000 stream of a whole series) and thumbnails, non-diagnostic")

CHUNK = 256 * 1024
NON_DIAGNOSTIC = {"X-Non-Diagnostic": "true"}

_NOT_YET = {"description": "no such series for this principal, or its object is not made yet: then the body's "
                           "errors.derived has the job's state and progress (asking queues the job)"}
_STREAM = {"description": "the preview stream (README: Preview stream)",
           "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
_IMAGE = {"description": "the thumbnail", "content": {"image/jpeg": {}, "image/png": {}}}
_RANGE = [{"name": "Range", "in": "header", "schema": {"type": "string", "example": "bytes=0-65535"},
           "description": "one byte range of the whole stream (not with slices)"},
          {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}]


def _cache_control(max_age: int) -> str:
    # A signed URL carries its credentials in its query: a shared cache (CDN) may keep the
    # answer under the URL. A bearer-token request is for its principal only.
    return f"public, max-age={max_age}" if SIGNATURE_PARAM in request.args else f"private, max-age={max_age}"


def _preview(study: str, series: str, args: dict, version: str | None) -> Response:
    core = services()
    _, obj = core.derived.require(principal(), study, series, "preview", version=version)
    headers = {"Content-Type": MEDIA_TYPE, "ETag": f'"{obj.version}"', "X-Preview-Version": obj.version,
               "Cache-Control": _cache_control(core.settings["previews.preview_max_age"]), **NON_DIAGNOSTIC}
    if request.if_none_match.contains_weak(obj.version) and not args.get("slices"):
        return Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    fh = core.derived.open(obj)
    if args.get("slices"):
        with contextlib.closing(fh):
            header, data_start = read_header(fh.read)
        count = len(header["slices"])
        chosen = parse_slices(args["slices"], count)
        sub = subset_header(header, chosen.first - 1, chosen.last - 1)
        start = data_start + header["slices"][chosen.first - 1]["offset"]
        stop = data_start + header["slices"][chosen.last - 1]["offset"] + header["slices"][chosen.last - 1]["length"]
        prefix = encode_header(sub)
        headers["Content-Length"] = str(len(prefix) + stop - start)
        return Response(_chunks(core.derived.open(obj), start, stop, prefix), headers=headers,
                        direct_passthrough=True)
    length = obj.size
    headers["Accept-Ranges"] = "bytes"
    wanted = byte_range(request.headers.get("Range"), length)
    if wanted == UNSATISFIABLE:
        fh.close()
        response = jsonify(error_body(416, f"the range {request.headers.get('Range')!r} is outside the preview's "
                                           f"{length} bytes"))
        response.status_code = 416
        response.headers.update({"Content-Range": f"bytes */{length}", "ETag": headers["ETag"]})
        return response
    if wanted is None:
        headers["Content-Length"] = str(length)
        return Response(_chunks(fh, 0, length), headers=headers, direct_passthrough=True)
    start, stop = wanted
    headers.update({"Content-Length": str(stop - start), "Content-Range": f"bytes {start}-{stop - 1}/{length}"})
    return Response(_chunks(fh, start, stop), status=206, headers=headers, direct_passthrough=True)


def _chunks(fh, start: int, stop: int, prefix: bytes = b""):
    with contextlib.closing(fh):
        if prefix:
            yield prefix
        fh.seek(start)
        left = stop - start
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"stored preview ended {left} bytes early")
            left -= len(chunk)
            yield chunk


def image_name(kind: str, args: dict, settings) -> str:
    """The derived object a thumbnail or snapshot request names (400 for an unknown preset)."""
    if kind == "thumbnail":
        return f"thumbnail/{args.get('size', 256)}.{args.get('format', 'jpeg')}"
    presets = [p["name"] for p in settings["previews.snapshot_presets"]]
    preset = args.get("preset", "bone")
    if preset not in presets:
        raise BadRequest(f"preset {preset!r} is not one of {', '.join(presets)} (previews.snapshot_presets)")
    return f"snapshot/{preset}-{args.get('mode', 'vr')}.png"


def _image(kind: str, study: str, series: str, args: dict, version: str | None) -> Response:
    core = services()
    name = image_name(kind, args, core.settings)
    _, obj = core.derived.require(principal(), study, series, name, version=version)
    tag = f"{obj.version}-{name.replace('/', '-')}"
    headers = {"Content-Type": obj.content_type, "ETag": f'"{tag}"',
               "Cache-Control": _cache_control(core.settings["previews.thumbnail_max_age"]), **NON_DIAGNOSTIC}
    if request.if_none_match.contains_weak(tag):
        return Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    with contextlib.closing(core.derived.open(obj)) as fh:
        data = fh.read()
    return Response(data, headers=headers)


@blp.route("/<study>/series/<series>/preview", methods=["GET"])
@blp.arguments(PreviewQuery, **QUERY)
@blp.doc(summary="The preview stream of a series",
         description="Every slice as a lossy JPEG 2000 codestream (binned), ordered along the slice axis, after a "
                     "JSON geometry header with an offset table (README: Preview stream). slices=a-b: those "
                     "slices only (a header of their own). Range: bytes of the whole stream. Non-diagnostic.",
         parameters=_RANGE, responses={200: _STREAM, 206: _STREAM, 304: {"description": "not modified"},
                                       404: _NOT_YET})
def preview(args: dict, study: str, series: str):
    return _preview(study, series, args, None)


@blp.route("/<study>/series/<series>/preview/v/<version>", methods=["GET"])
@blp.arguments(PreviewQuery, **QUERY)
@blp.doc(summary="One version of the preview stream (signed CDN URLs)",
         description="As the preview, while version is the latest; 404 once a newer one exists.",
         parameters=_RANGE, responses={200: _STREAM, 206: _STREAM, 404: _NOT_YET})
def preview_version(args: dict, study: str, series: str, version: str):
    return _preview(study, series, args, version)


@blp.route("/<study>/series/<series>/preview/status", methods=["GET"])
@blp.response(200, DerivedStatusSchema)
@blp.doc(summary="Whether the previews of a series are made, and how far their job is",
         responses={404: {"description": "no such series for this principal"}})
def preview_status(study: str, series: str):
    return services().derived.series(principal(), study, series).status()


@blp.route("/<study>/series/<series>/preview/events", methods=["GET"])
@blp.doc(summary="Follow the making of a series' previews (Server-Sent Events)",
         description="text/event-stream: status (the status document) at once and on every change, then ready "
                     "(version) or failed (job), which end the stream. Asking queues the job when nothing is made.",
         responses={200: {"description": "the event stream", "content": {"text/event-stream": {}}},
                    404: {"description": "no such series for this principal"}})
def preview_events(study: str, series: str):
    derived, who = services().derived, principal()
    found = derived.series(who, study, series)
    if "preview" not in found.objects:
        derived.request(found, "preview events asked for")

    def stream():
        last, quiet, number = None, time.monotonic(), 0
        while True:
            status = derived.series(who, study, series).status()
            if status != last:
                number += 1
                last, quiet = status, time.monotonic()
                yield sse_event(number, "status", status)
                if status["state"] in ("ready", "failed"):
                    yield sse_event(number + 1, status["state"], {"version": status["version"],
                                                                  "job": status.get("job")})
                    return
            elif time.monotonic() - quiet > KEEP_ALIVE:
                quiet = time.monotonic()
                yield ": still working\n\n"
            time.sleep(EVENT_POLL)

    return sse_response(stream())


@blp.route("/<study>/series/<series>/thumbnail", methods=["GET"])
@blp.arguments(ThumbnailQuery, **QUERY)
@blp.doc(summary="A thumbnail of a series (256 or 512 px, JPEG or PNG)",
         description="2D images as they are; a CT as its windowed middle slice; fitted in a square of size px.",
         responses={200: _IMAGE, 304: {"description": "not modified"}, 404: _NOT_YET})
def thumbnail(args: dict, study: str, series: str):
    return _image("thumbnail", study, series, args, None)


@blp.route("/<study>/series/<series>/thumbnail/v/<version>", methods=["GET"])
@blp.arguments(ThumbnailQuery, **QUERY)
@blp.doc(summary="One version of a thumbnail (signed CDN URLs)",
         description="As the thumbnail, while version is the latest; 404 once a newer one exists.",
         responses={200: _IMAGE, 404: _NOT_YET})
def thumbnail_version(args: dict, study: str, series: str, version: str):
    return _image("thumbnail", study, series, args, version)


@blp.route("/<study>/series/<series>/snapshot", methods=["GET"])
@blp.arguments(SnapshotQuery, **QUERY)
@blp.doc(summary="The 3D snapshot of a CT volume (PNG)",
         description="One front view of the binned volume: vr (front-to-back composited with the preset's transfer "
                     "function) or mip (maximum intensity), windowed by the preset. Volumes only (a 2D image: 404).",
         responses={200: {"description": "the snapshot", "content": {"image/png": {}}},
                    400: {"description": "an unknown preset"}, 404: _NOT_YET})
def snapshot(args: dict, study: str, series: str):
    return _image("snapshot", study, series, args, None)


@blp.route("/<study>/series/<series>/snapshot/v/<version>", methods=["GET"])
@blp.arguments(SnapshotQuery, **QUERY)
@blp.doc(summary="One version of a 3D snapshot (signed CDN URLs)",
         responses={200: {"description": "the snapshot", "content": {"image/png": {}}}, 404: _NOT_YET})
def snapshot_version(args: dict, study: str, series: str, version: str):
    return _image("snapshot", study, series, args, version)


def derived_path(study: str, series: str, kind: str, version: str) -> str:
    if kind not in ("preview", "thumbnail", "snapshot"):
        raise BadRequest('"derived" is preview, thumbnail or snapshot')
    return f"/api/v1/studies/{study}/series/{series}/{kind}/v/{version}"


@blp.route("/<study>/series/<series>/mini-ct", methods=["POST"])
@blp.arguments(MiniCtRequestSchema, **BODY)
@blp.response(201, MiniCtSchema)
@blp.doc(summary="Make a Mini CT of a region of interest",
         description="A new DICOM series (stored and indexed like any other) of slices z, the box and a down-sampling "
                     "factor, its geometry corrected; the same request on the same source answers the same series "
                     "(cached: true). Needs write in the clinic that owns the series. Out of bounds: 400 naming the "
                     "valid bounds. download: a short-lived signed URL of its zip archive.",
         responses={400: {"description": "a range, box or factor outside the series' bounds"},
                    404: {"description": "no such series in the principal's clinic"}})
def mini_ct(body: dict, study: str, series: str):
    core, who = services(), principal()
    try:
        ttl = core.signer.ttl(body.get("ttl"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    made = core.minict.make(who, study, series, z=tuple(body["z"]) if body.get("z") else None,
                            box=body.get("box"), factor=body["downsample"])
    path = f"/api/v1/studies/{made.study_uid}/series/{made.series_uid}/archive"
    query = core.signer.sign("GET", path, who, ttl=ttl)
    return {"study_uid": made.study_uid, "series_uid": made.series_uid, "instances": made.sop_uids,
            "cached": made.cached, "geometry": made.geometry,
            "download": {"url": f"{public_base()}{path}?{urlencode(query)}",
                         "expires_at": iso(int(query["gw_exp"]) * 1000)}}
