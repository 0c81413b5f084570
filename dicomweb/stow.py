"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related or a single application/dicom body.

The whole body is staged first (spooled to disk part by part, in bounded
memory); only a body that parsed completely is committed, so a request cut off
mid-part stores nothing.
"""
from __future__ import annotations

import logging

from flask import current_app, request
from flask_smorest import Blueprint

from dicomweb.common import PREFIX, base_url, element, json_response
from dicomweb.media_types import parse_media_type
from dicomweb.multipart import MalformedMultipart, MultipartReader, parse_boundary
from gateway.errors import BackendUnavailable, BadRequest, PayloadTooLarge, UnsupportedMediaType
from gateway.services.ingest import InstanceOutcome, StagedInstance
from gateway.web import principal, request_body, services

logger = logging.getLogger(__name__)

blp = Blueprint("stow", __name__, url_prefix=PREFIX, description="STOW-RS: store instances")

_DICOM = "application/dicom"


def _stage_body() -> list[StagedInstance]:
    content_type = request.headers.get("Content-Type")
    if not content_type:
        raise UnsupportedMediaType("Content-Type is missing: send multipart/related; type=\"application/dicom\"")
    try:
        media_type, params = parse_media_type(content_type)
    except ValueError:
        raise UnsupportedMediaType(f"Content-Type {content_type!r} cannot be parsed") from None
    ingest = services().ingest
    if media_type == _DICOM:
        return [ingest.stage(request_body())]
    if media_type != "multipart/related":
        raise UnsupportedMediaType(
            f"Content-Type {media_type} is not supported: send multipart/related; type=\"application/dicom\" "
            "or application/dicom")
    related = params.get("type", _DICOM).lower()
    if related != _DICOM:
        raise UnsupportedMediaType(
            f"multipart/related type {related!r} is not supported: parts must be application/dicom")
    try:
        boundary = parse_boundary(content_type)
    except ValueError as exc:
        raise BadRequest(f"Content-Type has no usable boundary: {exc}") from None

    settings = current_app.config["GATEWAY_SETTINGS"]
    max_parts = settings["dicomweb.max_parts"]
    with ingest.pipeline() as staged:  # parts are inspected while the next ones arrive
        try:
            for part in MultipartReader(request_body(), boundary,
                                        max_header_bytes=settings["dicomweb.max_part_header_bytes"]):
                if part.index >= max_parts:
                    raise PayloadTooLarge(f"multipart body has more than dicomweb.max_parts={max_parts} parts: "
                                          "nothing was stored; send them in several requests")
                part_type = (part.content_type or _DICOM).split(";")[0].strip().lower()
                if part_type != _DICOM:
                    # The reader skips the unread body of this part.
                    staged.add(StagedInstance.rejected(UnsupportedMediaType(
                        f"part {part.index + 1} has Content-Type {part_type}, expected application/dicom")))
                    continue
                staged.stage(part.iter_chunks())
        except MalformedMultipart as exc:
            raise BadRequest(f"multipart body is malformed, nothing was stored: {exc}") from None
        if not len(staged):
            raise BadRequest("multipart body has no parts: nothing to store")
        return staged.results()


def _failure_item(outcome: InstanceOutcome) -> dict:
    item = {"00081197": element("US", outcome.error.failure_reason)}
    if outcome.sop_class_uid:
        item["00081150"] = element("UI", outcome.sop_class_uid)
    if outcome.sop_instance_uid:
        item["00081155"] = element("UI", outcome.sop_instance_uid)
    item["00000902"] = element("LO", outcome.error.message[:64 * 1024])
    return dict(sorted(item.items()))


def store(study: str | None = None):
    ingest = services().ingest
    who = principal()
    ingest.authorize(who)  # 403 before reading the body
    staged = _stage_body()
    outcomes = ingest.commit_many(staged, principal=who, expected_study=study)

    root = base_url()
    referenced, failed = [], []
    studies = set()
    for outcome in outcomes:
        if outcome.ok:
            studies.add(outcome.study_uid)
            url = (f"{root}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                   f"/instances/{outcome.sop_instance_uid}")
            referenced.append({
                "00081150": element("UI", outcome.sop_class_uid),
                "00081155": element("UI", outcome.sop_instance_uid),
                "00081190": element("UR", url),
            })
        else:
            failed.append(_failure_item(outcome))
    body: dict = {}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        body["00081190"] = element("UR", f"{root}/studies/{target}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}

    if not failed:
        status = 200
    elif referenced:
        status = 202
    elif all(isinstance(o.error, BackendUnavailable) for o in outcomes):
        status = 503
    elif len(outcomes) == 1 and isinstance(outcomes[0].error, (UnsupportedMediaType,)):
        status = 415
    else:
        status = 409
    logger.info("STOW: %d stored, %d failed", len(referenced), len(failed))
    response = json_response(body, status)
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


@blp.route("/studies", methods=["POST"])
@blp.doc(summary="Store instances (STOW-RS)", description="multipart/related; type=\"application/dicom\" "
         "or a single application/dicom body. 200 all stored, 202 some failed, 409 none stored.")
def store_instances():
    return store()


@blp.route("/studies/<study>", methods=["POST"])
@blp.doc(summary="Store instances into one study (STOW-RS)",
         description="Instances of another study fail alone with FailureReason 0xA901.")
def store_study_instances(study: str):
    return store(study)

