"""The gateway's own signed upload URLs, for blob stores that take no presigned PUT (the
filesystem store): ``PUT /api/v1/blob-uploads/{key}?ct=…&size=…&sha256=…&gw_…``.

Only signed URLs are accepted (made by ``…/mask-groups/{group}/signed-url``): the HMAC covers
the method, the key, the content type, the length, the checksum and the expiry, so a
changed or late URL is a 401 before this view runs. The body is streamed to a staging file,
checked, and stored whole or not at all.
"""
from __future__ import annotations

from flask import request
from flask_smorest import Blueprint

from auth.signing import SIGNATURE_PARAM
from gateway.errors import NotAuthorized
from gateway.web import principal, request_body, services
from proprietary.annotation_schemas import BlobUploadArgs, BlobUploadSchema
from proprietary.common import QUERY

blp = Blueprint("blob_uploads", __name__, url_prefix="/api/v1/blob-uploads",
                description="Signed upload URLs served by the gateway (filesystem blob store)")


@blp.route("/<path:key>", methods=["PUT"])
@blp.arguments(BlobUploadArgs, **QUERY)
@blp.response(200, BlobUploadSchema)
@blp.doc(summary="Upload one object through a signed URL",
         description="The body must have the signed Content-Type, exactly the signed length (413 beyond) and "
                     "sha256 (400 otherwise, nothing stored). Expired or changed URLs: 401.",
         requestBody={"required": True, "content": {"image/png": {"schema": {"type": "string",
                                                                            "format": "binary"}}}})
def put_object(args: dict, key: str):
    if SIGNATURE_PARAM not in request.args:
        raise NotAuthorized("blob uploads take signed URLs only (POST …/mask-groups/{group}/signed-url)")
    size, sha = services().masks.receive_upload(
        principal(), key, request.args.to_dict(flat=True), content_type=request.mimetype or None,
        content_length=request.content_length, body=request_body(256 * 1024))
    return {"key": key, "size": size, "sha256": sha}
