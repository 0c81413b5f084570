"""Annotations of a clinic's studies: ``/api/v1/annotations``."""
from __future__ import annotations

from flask import Response
from flask_smorest import Blueprint

from gateway.times import iso
from gateway.web import principal, services
from proprietary.annotation_schemas import (
    AnnotationCreateSchema,
    AnnotationFields,
    AnnotationListQuery,
    AnnotationListSchema,
    AnnotationSchema,
)
from proprietary.common import BODY, QUERY
from storage.records import AnnotationRecord

blp = Blueprint("annotations", __name__, url_prefix="/api/v1/annotations",
                description="Annotations and measurements of studies, series and instances")


def annotation_json(a: AnnotationRecord) -> dict:
    return {"id": a.id, "clinic": a.clinic_id, "user": a.user_id, "project": a.project_id, "study": a.study_uid,
            "series": a.series_uid, "instance": a.sop_uid, "type": a.type, "data": a.data,
            "measurements": a.measurements, "software": a.software, "created_at": iso(a.created_at),
            "updated_at": iso(a.updated_at)}


def _editable(body: dict) -> dict:
    return {"type": body["type"].strip(), "data": body.get("data"), "measurements": body.get("measurements"),
            "software": body.get("software"), "project_id": body.get("project")}


@blp.route("", methods=["POST"])
@blp.arguments(AnnotationCreateSchema, **BODY)
@blp.response(201, AnnotationSchema)
@blp.doc(summary="Annotate a study, series or instance",
         description="The study (series, instance) must be the clinic's own (404 otherwise, as for one that does "
                     "not exist); project: a project of the clinic. Needs the write action.")
def create_annotation(body: dict):
    created = services().annotations.create(
        principal(), study=body["study"].strip(), series=(body.get("series") or "").strip() or None,
        sop=(body.get("instance") or "").strip() or None, **_editable(body))
    return annotation_json(created)


@blp.route("", methods=["GET"])
@blp.arguments(AnnotationListQuery, **QUERY)
@blp.response(200, AnnotationListSchema)
@blp.doc(summary="The clinic's annotations, newest first", description="Filtered by study, series, project, user "
                                                                        "(the author's subject) and type.")
def list_annotations(args: dict):
    found = services().annotations.list(principal(), study=args.get("study"), series=args.get("series"),
                                        project_id=args.get("project"), user_id=args.get("user"),
                                        type=args.get("type"), limit=args["limit"], offset=args["offset"])
    return {"annotations": [annotation_json(a) for a in found]}


@blp.route("/<annotation_id>", methods=["GET"])
@blp.response(200, AnnotationSchema)
@blp.doc(summary="One annotation")
def get_annotation(annotation_id: str):
    return annotation_json(services().annotations.get(principal(), annotation_id))


@blp.route("/<annotation_id>", methods=["PUT"])
@blp.arguments(AnnotationFields, **BODY)
@blp.response(200, AnnotationSchema)
@blp.doc(summary="Replace an annotation's type, data, measurements, software and project",
         description="Its study, series and instance stay. Fields left out become null.")
def replace_annotation(body: dict, annotation_id: str):
    return annotation_json(services().annotations.update(principal(), annotation_id, _editable(body)))


@blp.route("/<annotation_id>", methods=["DELETE"])
@blp.response(204)
@blp.doc(summary="Delete an annotation with its mask groups and masks (rows and objects)",
         description="Needs the delete action.")
def delete_annotation(annotation_id: str):
    services().annotations.delete(principal(), annotation_id)
    return Response(status=204)
