"""Rendered images and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.4): consumer-ready JPEG/PNG."""
from __future__ import annotations

import logging

from flask import Response, current_app, request
from flask_smorest import Blueprint

from auth.credentials import AUTH_PARAMS
from dicomweb.common import PREFIX
from dicomweb.negotiation import choose_rendered
from dicomweb.wado import parse_frame_list
from gateway.errors import BadRequest, NotFound
from gateway.imaging import (
    parse_viewport,
    parse_window,
    parse_window_function,
    render_frame,
)
from gateway.web import principal, services
from storage.records import InstanceRecord

logger = logging.getLogger(__name__)

blp = Blueprint("rendered", __name__, url_prefix=PREFIX, description="WADO-RS: rendered images and thumbnails")

_INSTANCE = "/studies/<study>/series/<series>/instances/<sop>"
_RENDER_PARAMS = {"window", "viewport", "quality", "annotation", "charset", "iccprofile"}


def _params(thumbnail: bool) -> dict:
    unknown = sorted(set(request.args) - _RENDER_PARAMS - AUTH_PARAMS)
    if unknown:
        raise BadRequest(f"unknown query parameter(s) for a rendered resource: {', '.join(unknown)}")
    params: dict = {}
    try:
        if "window" in request.args:
            params["window"] = parse_window(request.args["window"])
            params["window_function"] = parse_window_function(request.args["window"])
        if "viewport" in request.args:
            params["viewport"] = parse_viewport(request.args["viewport"])
        if "quality" in request.args:
            quality = int(request.args["quality"])
            if not 1 <= quality <= 100:
                raise ValueError("quality must be between 1 and 100")
            params["quality"] = quality
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if thumbnail and "viewport" not in params:
        size = current_app.config["GATEWAY_SETTINGS"]["dicomweb.thumbnail_size"]
        params["viewport"] = (size, size)
    return params


def _render(record: InstanceRecord, number: int, *, thumbnail: bool = False) -> Response:
    media_type = choose_rendered()
    params = _params(thumbnail)
    pixels, header = services().retrieve.decoded_frame(record, number)
    try:
        data = render_frame(pixels, header, media_type=media_type, frame_number=number, **params)
    except ValueError as exc:
        raise BadRequest(f"cannot render instance {record.sop_uid}: {exc}") from None
    response = Response(data, mimetype=media_type)
    if thumbnail:
        response.headers["Cache-Control"] = "private, max-age=86400"
    return response


def _representative(study: str, series: str | None = None) -> InstanceRecord:
    """The middle image of the series (or of the study's first series with pixel data)."""
    records = [r for r in services().retrieve.instances(principal(), study, series) if r.frame_index]
    if not records:
        raise NotFound(f"{'series ' + series if series else 'study ' + study} has no image to render")
    first_series = records[0].series_uid
    in_series = [r for r in records if r.series_uid == first_series]
    return in_series[len(in_series) // 2]


def _instance(study: str, series: str, sop: str) -> InstanceRecord:
    return services().retrieve.instances(principal(), study, series, sop)[0]


@blp.route(_INSTANCE + "/rendered", methods=["GET"])
@blp.doc(summary="An instance rendered (first frame of a multi-frame image)",
         description="window=center,width[,function], viewport=vw,vh, quality=1..100; image/jpeg or image/png.")
def instance_rendered(study: str, series: str, sop: str):
    return _render(_instance(study, series, sop), 1)


@blp.route(_INSTANCE + "/frames/<frame_list>/rendered", methods=["GET"])
@blp.doc(summary="A frame rendered")
def frame_rendered(study: str, series: str, sop: str, frame_list: str):
    numbers = parse_frame_list(frame_list)
    if len(numbers) != 1:
        raise BadRequest("a rendered frame resource takes exactly one frame number")
    return _render(_instance(study, series, sop), numbers[0])


@blp.route("/studies/<study>/thumbnail", methods=["GET"])
@blp.doc(summary="A study's thumbnail (middle image of its first series)")
def study_thumbnail(study: str):
    return _render(_representative(study), 1, thumbnail=True)


@blp.route("/studies/<study>/series/<series>/thumbnail", methods=["GET"])
@blp.doc(summary="A series' thumbnail (its middle image)")
def series_thumbnail(study: str, series: str):
    return _render(_representative(study, series), 1, thumbnail=True)


@blp.route(_INSTANCE + "/thumbnail", methods=["GET"])
@blp.doc(summary="An instance's thumbnail")
def instance_thumbnail(study: str, series: str, sop: str):
    return _render(_instance(study, series, sop), 1, thumbnail=True)


@blp.route(_INSTANCE + "/frames/<frame_list>/thumbnail", methods=["GET"])
@blp.doc(summary="A frame's thumbnail")
def frame_thumbnail(study: str, series: str, sop: str, frame_list: str):
    numbers = parse_frame_list(frame_list)
    if len(numbers) != 1:
        raise BadRequest("a thumbnail frame resource takes exactly one frame number")
    return _render(_instance(study, series, sop), numbers[0], thumbnail=True)
