"""Request and response bodies of the image metadata API (``/api/v1/metadata``)."""
from __future__ import annotations

import re

from marshmallow import Schema, ValidationError, fields, post_load, validate

from proprietary.schemas import QuerySchema, StrictSchema, _limit, _offset

MAX_TAGS = 40
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


class DicomDate(fields.String):
    """``YYYYMMDD`` or ``YYYY-MM-DD``, loaded as ``YYYYMMDD``."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        found = _DATE.match(text.strip())
        if not found:
            raise ValidationError("a date YYYYMMDD or YYYY-MM-DD")
        return "".join(found.groups())


# --- the viewer state ------------------------------------------------------------------------

class WindowSchema(StrictSchema):
    center = fields.Float(allow_none=True, allow_nan=False, metadata={"description": "window centre (level)"})
    width = fields.Float(allow_none=True, allow_nan=False, validate=validate.Range(min=0, min_inclusive=False))


class PanSchema(StrictSchema):
    x = fields.Float(allow_none=True, allow_nan=False)
    y = fields.Float(allow_none=True, allow_nan=False)


class FlipSchema(StrictSchema):
    horizontal = fields.Boolean(allow_none=True)
    vertical = fields.Boolean(allow_none=True)


class ViewerStateSchema(StrictSchema):
    """Every key optional; ``null`` (in a PATCH) resets a key to its default."""

    rotation = fields.Float(allow_none=True, allow_nan=False, validate=validate.Range(-360, 360),
                            metadata={"description": "degrees, clockwise"})
    zoom = fields.Float(allow_none=True, allow_nan=False, validate=validate.Range(0, 100, min_inclusive=False))
    window = fields.Nested(WindowSchema, allow_none=True)
    pan = fields.Nested(PanSchema, allow_none=True, metadata={"description": "image pixels"})
    flip = fields.Nested(FlipSchema, allow_none=True)

    @post_load
    def _numbers(self, data, **kwargs):
        # 90.0 is stored as 90: the same JSON whichever client sent it.
        def tidy(value):
            if isinstance(value, dict):
                return {k: tidy(v) for k, v in value.items()}
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return value

        return tidy(data)


_TAG = fields.String(validate=validate.Length(1, 64))


class MetadataPutSchema(StrictSchema):
    viewerState = fields.Nested(ViewerStateSchema, metadata={"description": "missing keys take their defaults"})
    annotations = fields.List(fields.Dict(), metadata={"description": "annotation references or bodies (JSON "
                                                                      "objects); large ones go to the blob store"})
    tags = fields.List(_TAG, validate=validate.Length(max=MAX_TAGS))
    type = fields.String(validate=validate.OneOf(["CT", "2D"]), metadata={"description": "default: from the "
                                                                                         "image (CT or 2D)"})


class AnnotationsPutSchema(StrictSchema):
    annotations = fields.List(fields.Dict(), required=True)


# --- answers ------------------------------------------------------------------------------------

class ShareTargetStateSchema(Schema):
    shareId = fields.String(metadata={"description": "the share (GET/DELETE /api/v1/shares/{id})"})
    type = fields.String()
    id = fields.String()
    clinic = fields.String()
    permissions = fields.List(fields.String())
    expiresAt = fields.String()


class ShareStateSchema(Schema):
    """Mirrored from the shares when they are made and revoked (no version of the record);
    targets expired at the time of the request are left out."""

    targets = fields.List(fields.Nested(ShareTargetStateSchema))
    expiresAt = fields.String(allow_none=True, metadata={"description": "the latest expiry of the active shares"})


class AnnotationsRefSchema(Schema):
    sha256 = fields.String()
    size = fields.Integer()
    count = fields.Integer()


class MetadataSchema(Schema):
    objectKey = fields.String(metadata={"description": "{study}/{series}/{instance}/{variant}"})
    study = fields.String()
    series = fields.String()
    instance = fields.String()
    variant = fields.String(metadata={"description": "original, preview or mini-ct"})
    clinic = fields.String()
    owner = fields.String()
    type = fields.String(metadata={"description": "CT or 2D"})
    viewerState = fields.Dict()
    annotations = fields.List(fields.Raw())
    annotationsRef = fields.Nested(AnnotationsRefSchema, metadata={"description": "annotations kept in the blob "
                                                                                 "store"})
    tags = fields.List(fields.String())
    share = fields.Nested(ShareStateSchema, metadata={"description": "from the share store, at read time"})
    patientId = fields.String(allow_none=True)
    studyDate = fields.String(allow_none=True)
    version = fields.Integer(metadata={"description": "the ETag"})
    createdAt = fields.String()
    updatedAt = fields.String()
    updatedBy = fields.String()
    source = fields.Dict(metadata={"description": "where the record came from (a .prj sidecar)"})


class MetadataListSchema(Schema):
    records = fields.List(fields.Nested(MetadataSchema))


class MetadataHistorySchema(Schema):
    versions = fields.List(fields.Nested(MetadataSchema))


class SidecarSchema(MetadataSchema):
    format = fields.String()
    image = fields.String(allow_none=True, metadata={"description": "the image's path in the zip layout"})


class MetadataSearchQuery(QuerySchema):
    study = fields.String()
    series = fields.String(metadata={"description": "with study"})
    patient = fields.String(metadata={"description": "Patient ID"})
    date_from = DicomDate(data_key="from", metadata={"description": "study date from (inclusive)"})
    date_to = DicomDate(data_key="to", metadata={"description": "study date to (inclusive)"})
    tag = fields.String()
    shared = fields.Boolean(metadata={"description": "true: studies with an active share; false: without"})
    limit = _limit()
    offset = _offset()


class MetadataHistoryQuery(QuerySchema):
    limit = _limit()
    before = fields.Integer(validate=validate.Range(min=1), metadata={"description": "versions below this one"})


class SidecarQuery(QuerySchema):
    disposition = fields.String(load_default="attachment", validate=validate.OneOf(["attachment", "inline"]),
                                metadata={"description": "attachment (a download, the default) or inline"})
