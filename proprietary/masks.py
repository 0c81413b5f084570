"""AI mask groups and masks of an annotation: ``/api/v1/annotations/{annotation_id}/mask-groups``.

The client asks for signed PUT URLs (``…/signed-url``), uploads each PNG itself (straight
to S3, or to the gateway's own upload URL with the filesystem store), then calls
``…/complete``; the work is :class:`gateway.services.masks.MaskService`'s.
"""
from __future__ import annotations

from flask import Response
from flask_smorest import Blueprint

from gateway.services.annotations import object_key
from gateway.services.masks import PNG
from gateway.times import iso
from gateway.web import principal, public_base, services
from proprietary.annotation_schemas import (
    MaskCompleteRequest,
    MaskCompleteSchema,
    MaskGroupCreateSchema,
    MaskGroupListSchema,
    MaskGroupSchema,
    MaskListQuery,
    MaskListSchema,
    MaskSchema,
    MaskSignRequest,
    MaskSignResponse,
)
from proprietary.common import BODY, QUERY
from storage.records import MaskGroupRecord, MaskRecord

blp = Blueprint("masks", __name__, url_prefix="/api/v1/annotations",
                description="AI segmentation mask groups and masks, uploaded by signed URL")

GROUPS = "/<annotation_id>/mask-groups"
GROUP = GROUPS + "/<group_id>"


def group_json(group: MaskGroupRecord) -> dict:
    base = f"{public_base()}/api/v1/annotations/{group.annotation_id}/mask-groups/{group.id}"
    return {"id": group.id, "annotation": group.annotation_id, "name": group.name, "model_name": group.model_name,
            "model_version": group.model_version, "modality": group.modality, "slice_count": group.slice_count,
            "mask_type": group.mask_type, "description": group.description, "created_by": group.created_by,
            "created_at": iso(group.created_at),
            "urls": {"self": base, "signed_url": base + "/signed-url", "complete": base + "/complete",
                     "masks": base + "/masks"}}


def mask_json(mask: MaskRecord) -> dict:
    url, expires = services().masks.download_url(principal(), mask, base_url=public_base())
    return {"id": mask.id, "group": mask.group_id, "annotation": mask.annotation_id, "slice": mask.slice_index,
            "label": mask.label, "key": object_key(mask.annotation_id, mask.group_id, mask.slice_index, mask.label),
            "content_type": mask.content_type, "size": mask.size, "sha256": mask.sha256, "width": mask.width,
            "height": mask.height, "sop_instance_uid": mask.sop_uid, "created_by": mask.created_by,
            "created_at": iso(mask.created_at), "download_url": url, "download_expires_at": iso(expires)}


@blp.route(GROUPS, methods=["POST"])
@blp.arguments(MaskGroupCreateSchema, **BODY)
@blp.response(201, MaskGroupSchema)
@blp.doc(summary="Create a mask group of an annotation",
         description="The annotation must name a series (masks are its slices); slice_count at most the series'. "
                     "Needs the write action.")
def create_group(body: dict, annotation_id: str):
    return group_json(services().masks.create_group(principal(), annotation_id, **body))


@blp.route(GROUPS, methods=["GET"])
@blp.response(200, MaskGroupListSchema)
@blp.doc(summary="An annotation's mask groups, oldest first")
def list_groups(annotation_id: str):
    return {"mask_groups": [group_json(g) for g in services().masks.list_groups(principal(), annotation_id)]}


@blp.route(GROUP, methods=["GET"])
@blp.response(200, MaskGroupSchema)
@blp.doc(summary="One mask group")
def get_group(annotation_id: str, group_id: str):
    return group_json(services().masks.get_group(principal(), annotation_id, group_id)[1])


@blp.route(GROUP, methods=["DELETE"])
@blp.response(204)
@blp.doc(summary="Delete a mask group with its masks (rows, then every object under its key prefix)",
         description="Needs the delete action.")
def delete_group(annotation_id: str, group_id: str):
    services().masks.delete_group(principal(), annotation_id, group_id)
    return Response(status=204)


@blp.route(GROUP + "/signed-url", methods=["POST"])
@blp.arguments(MaskSignRequest, **BODY)
@blp.response(201, MaskSignResponse)
@blp.doc(summary="Signed PUT URLs for mask PNGs",
         description='{"masks": [{"slice": 0, "label": "tooth_11", "size": 1234, "sha256": "…"}], "ttl": 600}: a '
                     "PUT URL per object mask/{annotation}/{group}/{slice:04d}_{label}.png with the headers to send "
                     "(Content-Type image/png; on S3 also the exact length and x-amz-checksum-sha256). A slice "
                     "outside the series is refused. ttl: auth.signed_url_ttl by default, at most "
                     "auth.signed_url_max_ttl. Needs the write action.")
def sign_uploads(body: dict, annotation_id: str, group_id: str):
    signed = services().masks.sign_uploads(principal(), annotation_id, group_id, body["masks"], ttl=body.get("ttl"),
                                           base_url=public_base())
    complete = f"{public_base()}/api/v1/annotations/{annotation_id}/mask-groups/{group_id}/complete"
    return {"group": group_id, "complete": complete,
            "uploads": [{"slice": s.slice_index, "label": s.label, "key": s.object_key, "method": s.method,
                         "url": s.url, "headers": s.headers, "size": s.size, "sha256": s.sha256,
                         "sop_instance_uid": s.sop_uid, "expires_at": iso(s.expires_at)} for s in signed]}


@blp.route(GROUP + "/complete", methods=["POST"])
@blp.arguments(MaskCompleteRequest, required=False, **BODY)
@blp.response(200, MaskCompleteSchema)
@blp.doc(summary="Check the uploaded objects and record the masks",
         description='{"masks": [{"slice", "label"}]} or no body (every upload signed and not yet recorded). Each '
                     "object must exist with the signed size and sha256 and be a PNG (width and height are read "
                     "from its IHDR). Any missing or wrong object: 400 naming each in errors.objects, nothing "
                     "recorded. Completing again answers the same masks (recorded 0).")
def complete(body: dict | None, annotation_id: str, group_id: str):
    items = (body or {}).get("masks")
    done = services().masks.complete(principal(), annotation_id, group_id, items)
    return {"group": group_id, "recorded": done.recorded, "already": done.already,
            "masks": [mask_json(m) for m in done.masks]}


@blp.route(GROUP + "/masks", methods=["GET"])
@blp.arguments(MaskListQuery, **QUERY)
@blp.response(200, MaskListSchema)
@blp.doc(summary="A group's masks by slice and label, each with a short-lived download URL")
def list_masks(args: dict, annotation_id: str, group_id: str):
    found = services().masks.list_masks(principal(), annotation_id, group_id, limit=args["limit"],
                                        offset=args["offset"])
    return {"masks": [mask_json(m) for m in found]}


@blp.route(GROUP + "/masks/<mask_id>", methods=["GET"])
@blp.response(200, MaskSchema)
@blp.doc(summary="One mask, with a short-lived download URL")
def get_mask(annotation_id: str, group_id: str, mask_id: str):
    return mask_json(services().masks.get_mask(principal(), annotation_id, group_id, mask_id))


@blp.route(GROUP + "/masks/<mask_id>/content", methods=["GET"])
@blp.doc(summary="The mask's PNG (what a gateway download URL points at)",
         responses={"200": {"description": "the PNG",
                            "content": {PNG: {"schema": {"type": "string", "format": "binary"}}}}})
def mask_content(annotation_id: str, group_id: str, mask_id: str):
    mask, reader = services().masks.open_mask(principal(), annotation_id, group_id, mask_id)

    def chunks():
        with reader:
            while chunk := reader.read(256 * 1024):
                yield chunk

    response = Response(chunks(), mimetype=PNG)
    response.headers["Content-Length"] = str(mask.size)
    response.headers["Cache-Control"] = "private, max-age=300"
    response.headers["ETag"] = f'"{mask.sha256}"'
    return response
