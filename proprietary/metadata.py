"""Image metadata with optimistic locking: ``/api/v1/metadata``.

An image object is named by its *object key* ``{study}/{series}/{instance}/{variant}``
(variants ``original``, ``preview``, ``mini-ct``). Answers carry ``ETag: "<version>"``; writes
need ``If-Match`` with it (``If-None-Match: *`` creates): 428 without, 412 with the current
record in ``current`` when another write came first.
"""
from __future__ import annotations

import json

from flask import Response, jsonify, request
from flask_smorest import Blueprint

from auth import policy
from gateway.errors import BadRequest, PreconditionFailed
from gateway.services.archives import safe_filename
from gateway.services.metadata import etag
from gateway.web import error_body, principal, services
from proprietary.common import BODY, QUERY, requires
from proprietary.metadata_schemas import (
    AnnotationsPutSchema,
    MetadataHistoryQuery,
    MetadataHistorySchema,
    MetadataListSchema,
    MetadataPutSchema,
    MetadataSchema,
    MetadataSearchQuery,
    SidecarQuery,
    SidecarSchema,
    ViewerStateSchema,
)
from storage.metadata import MetadataKey

blp = Blueprint("metadata", __name__, url_prefix="/api/v1/metadata",
                description="Image metadata (viewer state, annotations, tags) with optimistic locking")

KEY = "/<study>/<series>/<instance>/<variant>"
IF_MATCH = {"in": "header", "name": "If-Match", "schema": {"type": "string", "example": '"3"'},
            "description": "the ETag (version) of the record the change was made from"}
IF_NONE_MATCH = {"in": "header", "name": "If-None-Match", "schema": {"type": "string", "enum": ["*"]},
                 "description": "* to create the record (instead of If-Match)"}
_LOCKING = ('Needs If-Match: "<version>" (the ETag of the record the change was made from): 428 without it, 412 '
            "with the current record in `current` (and its ETag) when the record has moved on since.")


@blp.errorhandler(PreconditionFailed)
def _precondition_failed(exc: PreconditionFailed):
    body = error_body(412, exc.message)
    body["current"] = exc.current
    response = jsonify(body)
    response.status_code = 412
    if exc.current:
        response.headers["ETag"] = etag(exc.current["version"])
    return response


def _key(study: str, series: str, instance: str, variant: str) -> MetadataKey:
    try:
        return MetadataKey.of(study, series, instance, variant)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _answer(document: dict, status: int = 200):
    return document, status, {"ETag": etag(document["version"])}


@blp.route("", methods=["GET"])
@blp.arguments(MetadataSearchQuery, **QUERY)
@blp.response(200, MetadataListSchema)
@blp.doc(summary="Search the clinic's image metadata",
         description="By study (and series), patient, study date range (from, to: YYYYMMDD or YYYY-MM-DD), tag, "
                     "shared state; newest study first. Annotations kept in the blob store are not loaded here "
                     "(annotationsRef), read the record for them.")
def search_metadata(args: dict):
    found = services().metadata.search(
        principal(), study=args.get("study"), series=args.get("series"), patient=args.get("patient"),
        date_from=args.get("date_from"), date_to=args.get("date_to"), tag=args.get("tag"),
        shared=args.get("shared"), limit=args["limit"], offset=args["offset"])
    return {"records": found}


@blp.route(KEY, methods=["GET"])
@blp.response(200, MetadataSchema)
@blp.doc(summary="One image's metadata", description="With ETag: the version to send back in If-Match.")
def get_metadata(study: str, series: str, instance: str, variant: str):
    return _answer(services().metadata.get(principal(), _key(study, series, instance, variant)))


@blp.route(KEY, methods=["PUT"])
@requires(policy.WRITE, "metadata")
@blp.arguments(MetadataPutSchema, **BODY)
@blp.response(200, MetadataSchema)
@blp.alt_response(201, schema=MetadataSchema, description="created (If-None-Match: *)")
@blp.doc(parameters=[IF_MATCH, IF_NONE_MATCH], summary="Create or replace an image's metadata",
         description="If-None-Match: * creates the record (412 when it exists). " + _LOCKING +
                     " Fields left out keep their value. The image must be stored in the clinic (404).")
def put_metadata(body: dict, study: str, series: str, instance: str, variant: str):
    creating = request.headers.get("If-Match") is None and request.headers.get("If-None-Match", "").strip() == "*"
    document = services().metadata.put(principal(), _key(study, series, instance, variant), body,
                                       if_match=request.headers.get("If-Match"),
                                       if_none_match=request.headers.get("If-None-Match"))
    return _answer(document, 201 if creating else 200)


@blp.route(KEY + "/viewer-state", methods=["PATCH"])
@requires(policy.WRITE, "metadata")
@blp.arguments(ViewerStateSchema, **BODY)
@blp.response(200, MetadataSchema)
@blp.doc(parameters=[IF_MATCH], summary="Change part of the viewer state",
         description="A JSON merge patch (RFC 7386) of {rotation, zoom, window {center, width}, pan {x, y}, flip "
                     "{horizontal, vertical}}: keys left out keep their value, null resets one. " + _LOCKING)
def patch_viewer_state(changes: dict, study: str, series: str, instance: str, variant: str):
    if not changes:
        raise BadRequest("the patch changes nothing: give at least one of rotation, zoom, window, pan, flip")
    return _answer(services().metadata.patch_viewer_state(principal(), _key(study, series, instance, variant),
                                                          changes, if_match=request.headers.get("If-Match")))


@blp.route(KEY + "/annotations", methods=["PUT"])
@requires(policy.WRITE, "metadata")
@blp.arguments(AnnotationsPutSchema, **BODY)
@blp.response(200, MetadataSchema)
@blp.doc(parameters=[IF_MATCH], summary="Replace an image's annotations",
         description="Bodies above metadata.inline_annotations_max bytes go to the blob store (the record keeps "
                     "annotationsRef); above metadata.max_annotations_bytes: 413. " + _LOCKING)
def put_annotations(body: dict, study: str, series: str, instance: str, variant: str):
    return _answer(services().metadata.put_annotations(principal(), _key(study, series, instance, variant),
                                                       body["annotations"],
                                                       if_match=request.headers.get("If-Match")))


@blp.route(KEY + "/history", methods=["GET"])
@blp.arguments(MetadataHistoryQuery, **QUERY)
@blp.response(200, MetadataHistorySchema)
@blp.doc(summary="Every version of an image's metadata, newest first",
         description="limit, and before=<version> for the next page.")
def metadata_history(args: dict, study: str, series: str, instance: str, variant: str):
    versions = services().metadata.history(principal(), _key(study, series, instance, variant),
                                           limit=args["limit"], before=args.get("before"))
    return {"versions": versions}


@blp.route(KEY + "/sidecar", methods=["GET"])
@blp.arguments(SidecarQuery, **QUERY)
@blp.response(200, SidecarSchema, content_type="application/json")
@blp.doc(summary="The record as a JSON sidecar file",
         description="Content-Disposition names it after the image in the zip download's layout (0001.json beside "
                     "0001.dcm; 0001.preview.json for a variant), for desktop and offline use.")
def metadata_sidecar(args: dict, study: str, series: str, instance: str, variant: str):
    path, document = services().metadata.sidecar(principal(), _key(study, series, instance, variant))
    name = path.rsplit("/", 1)[-1]
    filename = safe_filename(name[:-5], ".json") if name.endswith(".json") else safe_filename(name, ".json")
    return Response(json.dumps(document, indent=2, ensure_ascii=False) + "\n", mimetype="application/json",
                    headers={"Content-Disposition": f'{args["disposition"]}; filename="{filename}"',
                             "ETag": etag(document["version"])})
