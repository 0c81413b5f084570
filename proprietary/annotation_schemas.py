"""Request and response bodies of users, projects, annotations, mask groups and masks."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from proprietary.schemas import QuerySchema, StrictSchema, _offset

MAX_MASK_LIST = 10_000


def _text(maximum: int, **kwargs) -> fields.String:
    return fields.String(validate=validate.Length(1, maximum), **kwargs)


def _optional(maximum: int, description: str | None = None) -> fields.String:
    return fields.String(allow_none=True, validate=validate.Length(max=maximum),
                         metadata={"description": description} if description else {})


def _page(default: int, maximum: int) -> fields.Integer:
    return fields.Integer(load_default=default, validate=validate.Range(0, maximum),
                          metadata={"description": f"at most {maximum}"})


# --- users ------------------------------------------------------------------------------------

class UserSchema(Schema):
    id = fields.String(metadata={"description": "the token's subject"})
    clinic = fields.String()
    username = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    organization = fields.String(allow_none=True)
    department = fields.String(allow_none=True)
    roles = fields.List(fields.String())
    created_at = fields.String()
    updated_at = fields.String()


# --- projects ---------------------------------------------------------------------------------

class ProjectCreateSchema(StrictSchema):
    name = _text(200, required=True)
    description = _optional(2000)


class ProjectUpdateSchema(StrictSchema):
    name = _text(200)
    description = _optional(2000)


class ProjectListQuery(QuerySchema):
    limit = _page(100, 1000)
    offset = _offset()


class ProjectSchema(Schema):
    id = fields.String()
    clinic = fields.String()
    name = fields.String()
    description = fields.String(allow_none=True)
    created_by = fields.String()
    created_at = fields.String()
    updated_at = fields.String()


class ProjectListSchema(Schema):
    projects = fields.List(fields.Nested(ProjectSchema))


# --- annotations ------------------------------------------------------------------------------

class AnnotationFields(StrictSchema):
    """What a client may set on an annotation (PUT replaces all of it)."""

    type = _text(64, required=True, metadata={"description": "e.g. measurement, angle, segmentation, note"})
    data = fields.Raw(allow_none=True, metadata={"description": "any JSON: the annotation's geometry and content"})
    measurements = fields.Raw(allow_none=True, metadata={"description": "any JSON: measured values"})
    software = _optional(200, "the viewer software (and version) that made it")
    project = fields.String(allow_none=True, metadata={"description": "a project id of the clinic"})


class AnnotationCreateSchema(AnnotationFields):
    study = _text(64, required=True, metadata={"description": "Study Instance UID"})
    series = _text(64, metadata={"description": "Series Instance UID"})
    instance = _text(64, metadata={"description": "SOP Instance UID (with its series)"})


class AnnotationListQuery(QuerySchema):
    study = fields.String()
    series = fields.String()
    project = fields.String()
    user = fields.String()
    type = fields.String()
    limit = _page(100, 1000)
    offset = _offset()


class AnnotationSchema(Schema):
    id = fields.String()
    clinic = fields.String()
    user = fields.String()
    project = fields.String(allow_none=True)
    study = fields.String()
    series = fields.String(allow_none=True)
    instance = fields.String(allow_none=True)
    type = fields.String()
    data = fields.Raw(allow_none=True)
    measurements = fields.Raw(allow_none=True)
    software = fields.String(allow_none=True)
    created_at = fields.String()
    updated_at = fields.String()


class AnnotationListSchema(Schema):
    annotations = fields.List(fields.Nested(AnnotationSchema))


# --- mask groups ------------------------------------------------------------------------------

class MaskGroupCreateSchema(StrictSchema):
    name = _text(200, required=True)
    model_name = _optional(200, "the AI model that made the masks")
    model_version = _optional(100)
    modality = _optional(16)
    slice_count = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1),
                                 metadata={"description": "slices the masks cover (at most the series')"})
    mask_type = fields.String(load_default="segmentation", validate=validate.Length(1, 64))
    description = _optional(2000)


class MaskGroupUrlsSchema(Schema):
    self = fields.String()
    signed_url = fields.String()
    complete = fields.String()
    masks = fields.String()


class MaskGroupSchema(Schema):
    id = fields.String()
    annotation = fields.String()
    name = fields.String()
    model_name = fields.String(allow_none=True)
    model_version = fields.String(allow_none=True)
    modality = fields.String(allow_none=True)
    slice_count = fields.Integer(allow_none=True)
    mask_type = fields.String()
    description = fields.String(allow_none=True)
    created_by = fields.String()
    created_at = fields.String()
    urls = fields.Nested(MaskGroupUrlsSchema)


class MaskGroupListSchema(Schema):
    mask_groups = fields.List(fields.Nested(MaskGroupSchema))


class MaskUploadItem(StrictSchema):
    slice = fields.Integer(required=True, strict=True, validate=validate.Range(min=0),
                           metadata={"description": "position in the series (0: its first slice)"})
    label = fields.String(required=True, metadata={"description": "e.g. tooth_11, mandibular_canal"})
    size = fields.Integer(required=True, strict=True, metadata={"description": "bytes of the PNG"})
    sha256 = fields.String(required=True, metadata={"description": "of the PNG, hexadecimal"})


class MaskSignRequest(StrictSchema):
    masks = fields.List(fields.Nested(MaskUploadItem), required=True)
    ttl = fields.Integer(strict=True, metadata={"description": "seconds the URLs live (default "
                                                               "auth.signed_url_ttl, at most auth.signed_url_max_ttl)"})


class MaskSignedUploadSchema(Schema):
    slice = fields.Integer()
    label = fields.String()
    key = fields.String(metadata={"description": "mask/{annotation}/{group}/{slice:04d}_{label}.png"})
    method = fields.String()
    url = fields.String()
    headers = fields.Dict(keys=fields.String(), values=fields.String(),
                          metadata={"description": "send exactly these headers with the PUT"})
    size = fields.Integer()
    sha256 = fields.String()
    sop_instance_uid = fields.String(allow_none=True)
    expires_at = fields.String()


class MaskSignResponse(Schema):
    group = fields.String()
    uploads = fields.List(fields.Nested(MaskSignedUploadSchema))
    complete = fields.String(metadata={"description": "where to POST once the objects are uploaded"})


class MaskCompleteItem(StrictSchema):
    slice = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    label = fields.String(required=True)


class MaskCompleteRequest(StrictSchema):
    masks = fields.List(fields.Nested(MaskCompleteItem),
                        metadata={"description": "the masks to record; absent: every upload signed and not recorded"})


class MaskSchema(Schema):
    id = fields.String()
    group = fields.String()
    annotation = fields.String()
    slice = fields.Integer()
    label = fields.String()
    key = fields.String()
    content_type = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    width = fields.Integer()
    height = fields.Integer()
    sop_instance_uid = fields.String(allow_none=True)
    created_by = fields.String()
    created_at = fields.String()
    download_url = fields.String(metadata={"description": "short-lived: S3 presigned, or a signed gateway URL"})
    download_expires_at = fields.String()


class MaskListQuery(QuerySchema):
    limit = _page(MAX_MASK_LIST, MAX_MASK_LIST)
    offset = _offset()


class MaskListSchema(Schema):
    masks = fields.List(fields.Nested(MaskSchema))


class MaskCompleteSchema(Schema):
    group = fields.String()
    recorded = fields.Integer(metadata={"description": "masks recorded by this call"})
    already = fields.Integer(metadata={"description": "masks named that were recorded before"})
    masks = fields.List(fields.Nested(MaskSchema))


# --- gateway-served upload URLs -----------------------------------------------------------------

class BlobUploadArgs(QuerySchema):
    ct = fields.String(required=True, metadata={"description": "the signed content type"})
    size = fields.Integer(required=True, metadata={"description": "the signed length"})
    sha256 = fields.String(required=True, metadata={"description": "the signed SHA-256, hexadecimal"})


class BlobUploadSchema(Schema):
    key = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
