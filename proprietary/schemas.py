"""Request and response bodies of the fast API, as marshmallow schemas.

flask-smorest validates requests with them (a body or query that does not fit answers 400
naming the field) and writes them into the OpenAPI document at ``/api/openapi.json``.
Semantic checks (an expiry in the past, a study the clinic does not hold) stay in the core
services, which answer with the same error shape.
"""
from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, pre_load, validate

from auth.credentials import AUTH_PARAMS

MAX_LIMIT = 1000


class StrictSchema(Schema):
    """Unknown keys are an error (a typo is not silently ignored)."""

    class Meta:
        unknown = RAISE


class QuerySchema(StrictSchema):
    """Query parameters; those that carry credentials (``share``, ``gw_*``) are not the view's."""

    @pre_load
    def _drop_credentials(self, data, **kwargs):
        return {k: v for k, v in data.items() if k not in AUTH_PARAMS}


def _limit(default: int = 100) -> fields.Integer:
    return fields.Integer(load_default=default, validate=validate.Range(0, MAX_LIMIT),
                          metadata={"description": f"at most {MAX_LIMIT}"})


def _offset() -> fields.Integer:
    return fields.Integer(load_default=0, validate=validate.Range(min=0))


class TimeField(fields.Raw):
    """ISO 8601 (``2025-01-31T12:00:00Z``, a date) or milliseconds since the epoch."""

    def __init__(self, **kwargs):
        super().__init__(metadata={"type": "string", "example": "2025-01-31T12:00:00Z",
                                   "description": "ISO 8601 time or milliseconds since the epoch"}, **kwargs)


# --- shares ---------------------------------------------------------------------------------

class ShareTargetSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.OneOf(["user", "clinic", "link"]))
    id = fields.String(metadata={"description": "user or clinic id (not for a link)"})
    clinic = fields.String(metadata={"description": "a user target: only when the user acts for this clinic"})


class ShareCreateSchema(StrictSchema):
    study = fields.String(required=True, metadata={"description": "Study Instance UID"})
    series = fields.String(metadata={"description": "Series Instance UID: share this series only"})
    targets = fields.List(fields.Dict(), required=True,
                          metadata={"description": 'e.g. [{"type": "clinic", "id": "lab-1"}, {"type": "link"}]'})
    permissions = fields.List(fields.String(validate=validate.OneOf(["view", "download"])),
                              metadata={"description": 'default ["view"]; "download" also allows the originals'})
    expires_at = TimeField()
    ttl = fields.Integer(strict=True, metadata={"description": "seconds (instead of expires_at)"})


class ShareSchema(Schema):
    id = fields.String()
    clinic = fields.String(metadata={"description": "the owning clinic"})
    study = fields.String()
    series = fields.String(allow_none=True)
    target = fields.Nested(ShareTargetSchema)
    permissions = fields.List(fields.String())
    created_by = fields.String()
    created_at = fields.String()
    expires_at = fields.String()
    revoked_at = fields.String(allow_none=True)
    active = fields.Boolean()
    token = fields.String(metadata={"description": "a link's token, shown once (only its sha256 is kept)"})
    url = fields.String(metadata={"description": "a link's URL (auth.share_link_url)"})


class ShareListSchema(Schema):
    shares = fields.List(fields.Nested(ShareSchema))


class ShareListQuery(QuerySchema):
    direction = fields.String(load_default="outgoing", validate=validate.OneOf(["outgoing", "incoming"]))
    study = fields.String()
    all = fields.Boolean(load_default=False, metadata={"description": "with revoked and expired shares"})
    limit = _limit()
    offset = _offset()


# --- audit ----------------------------------------------------------------------------------

class AuditQueryArgs(QuerySchema):
    user = fields.String()
    action = fields.String(metadata={"description": "login, search, read, store, delete, share, revoke, sign, admin, metadata"})
    outcome = fields.String(metadata={"description": "ok, denied, not_found"})
    resource = fields.String(metadata={"description": "a prefix, e.g. study:1.2.3"})
    since = TimeField()
    until = TimeField()
    clinic = fields.String(metadata={"description": "operators only: another clinic's records"})
    limit = _limit()
    offset = _offset()
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "jsonl"]))


class AuditRecordSchema(Schema):
    id = fields.Integer()
    at = fields.Integer(metadata={"description": "milliseconds since the epoch"})
    time = fields.String()
    action = fields.String()
    outcome = fields.String()
    user_id = fields.String(allow_none=True)
    clinic_id = fields.String(allow_none=True)
    resource = fields.String()
    resource_clinic = fields.String(allow_none=True)
    client = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    door = fields.String(allow_none=True)
    detail = fields.String(allow_none=True)


class AuditListSchema(Schema):
    records = fields.List(fields.Nested(AuditRecordSchema))


# --- signed URLs ------------------------------------------------------------------------------

class SignedUrlRequest(StrictSchema):
    path = fields.String(metadata={"description": "a path under /dicom-web/"})
    method = fields.String(load_default="GET", validate=validate.OneOf(["GET", "HEAD", "get", "head"]))
    params = fields.Dict(keys=fields.String(), load_default=dict, metadata={"description": "query parameters"})
    ttl = fields.Integer(strict=True, metadata={"description": "seconds, at most auth.signed_url_max_ttl"})
    study = fields.String()
    series = fields.String()
    instance = fields.String(metadata={"description": "with study and series: a download URL of the instance"})
    derived = fields.String(validate=validate.OneOf(["preview", "thumbnail", "snapshot"]),
                            metadata={"description": "with study and series: a URL of the latest version of the "
                                                     "series' preview stream, thumbnail or 3D snapshot "
                                                     "(CDN-cacheable)"})
    preset = fields.String(metadata={"description": "snapshot: a preset name"})
    mode = fields.String(validate=validate.OneOf(["vr", "mip"]), metadata={"description": "snapshot: vr or mip"})
    size = fields.Integer(validate=validate.OneOf([256, 512]), metadata={"description": "thumbnail: 256 or 512"})
    format = fields.String(validate=validate.OneOf(["jpeg", "png"]), metadata={"description": "thumbnail: jpeg, png"})


class SignedUrlSchema(Schema):
    url = fields.String()
    method = fields.String()
    expires_at = fields.String()
    kind = fields.String(metadata={"description": "gateway (a signed gateway URL) or s3 (presigned)"})


# --- the job queue (administration) ------------------------------------------------------------

class JobQueryArgs(QuerySchema):
    status = fields.String(validate=validate.OneOf(["pending", "failed"]))
    clinic = fields.String(metadata={"description": "operators only: another clinic's jobs"})
    limit = _limit()
    offset = _offset()


class JobListQueryArgs(JobQueryArgs):
    kind = fields.String(metadata={"description": "e.g. forward"})


class RetryRequest(StrictSchema):
    ids = fields.List(fields.Integer(strict=True), metadata={"description": "no ids: every failed one"})


class RetriedSchema(Schema):
    retried = fields.Integer()


class CountsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    pending = fields.Integer()
    running = fields.Integer()
    failed = fields.Integer()


class ForwardSchema(Schema):
    id = fields.Integer()
    clinic_id = fields.String()
    destination = fields.String()
    study_uid = fields.String()
    series_uid = fields.String()
    sop_uid = fields.String()
    rule = fields.String()
    status = fields.String(metadata={"description": "pending (also while being sent) or failed"})
    attempts = fields.Integer()
    next_attempt_at = fields.Integer(metadata={"description": "milliseconds since the epoch"})
    last_error = fields.String(allow_none=True)
    created_at = fields.Integer()
    updated_at = fields.Integer()


class ForwardListSchema(Schema):
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(),
                         metadata={"description": "pending and failed"})
    items = fields.List(fields.Nested(ForwardSchema))


class JobSchema(Schema):
    id = fields.Integer()
    kind = fields.String()
    clinic_id = fields.String()
    key = fields.String()
    status = fields.String(metadata={"description": "pending, running (leased by a worker) or failed"})
    attempts = fields.Integer()
    next_attempt_at = fields.Integer()
    lease_until = fields.Integer(allow_none=True)
    progress = fields.Dict(allow_none=True)
    payload = fields.Dict()
    last_error = fields.String(allow_none=True)
    created_at = fields.Integer()
    updated_at = fields.Integer()


class JobListSchema(Schema):
    counts = fields.Nested(CountsSchema)
    items = fields.List(fields.Nested(JobSchema))


# --- uploads -------------------------------------------------------------------------------------

class UploadCreateSchema(StrictSchema):
    study = fields.String(metadata={"description": "every instance must be of this study (else it is rejected)"})
    expected_instances = fields.Integer(strict=True, validate=validate.Range(min=1),
                                        metadata={"description": "checked when the upload is completed"})
    client = fields.String(validate=validate.Length(max=200), metadata={"description": "the client's name"})


class UploadQueryArgs(QuerySchema):
    """For ``POST /api/v1/uploads`` with the zip as the body: what the JSON body says otherwise."""

    study = fields.String()
    expected_instances = fields.Integer(validate=validate.Range(min=1))
    client = fields.String(validate=validate.Length(max=200))


class UploadListQuery(QuerySchema):
    status = fields.String(validate=validate.OneOf(["open", "complete", "expired"]))
    limit = _limit()
    offset = _offset()


class UploadUrlsSchema(Schema):
    self = fields.String()
    archive = fields.String(metadata={"description": "PUT a zip here (again, to resume)"})
    events = fields.String(metadata={"description": "Server-Sent Events of the upload"})
    complete = fields.String(metadata={"description": "POST here when every entry is sent"})


class UploadEntrySchema(Schema):
    name = fields.String()
    part = fields.Integer(metadata={"description": "the archive (1, 2...) that held it"})
    size = fields.Integer(metadata={"description": "bytes unpacked"})
    outcome = fields.String(metadata={"description": "stored, duplicate, replaced, rejected, skipped or sidecar"})
    sha256 = fields.String(allow_none=True)
    sop_instance_uid = fields.String(allow_none=True)
    study_uid = fields.String(allow_none=True)
    series_uid = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    failure_reason = fields.Integer(allow_none=True, metadata={"description": "DICOM FailureReason of a rejection"})
    offset = fields.Integer(allow_none=True, metadata={"description": "archive bytes read when it was done"})


class UploadPartSchema(Schema):
    part = fields.Integer()
    state = fields.String(metadata={"description": "receiving, done, refused (a hostile or broken archive) or lost "
                                                   "(the connection dropped): resume once it is not receiving"})
    consumed = fields.Integer(metadata={"description": "archive bytes up to the end of its last entry done"})
    entries = fields.Integer()
    error = fields.String()


class UploadSchema(Schema):
    id = fields.String()
    status = fields.String(metadata={"description": "open, complete or expired"})
    clinic = fields.String()
    created_by = fields.String()
    created_at = fields.String()
    expires_at = fields.String()
    completed_at = fields.String(allow_none=True)
    client = fields.String(allow_none=True)
    expected_study = fields.String(allow_none=True)
    expected_instances = fields.Integer(allow_none=True)
    bytes_received = fields.Integer()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(),
                         metadata={"description": "entries by outcome"})
    urls = fields.Nested(UploadUrlsSchema)


class UploadListingSchema(UploadSchema):
    parts = fields.List(fields.Nested(UploadPartSchema))
    entries = fields.List(fields.Nested(UploadEntrySchema))


class UploadListSchema(Schema):
    uploads = fields.List(fields.Nested(UploadSchema))


class PartResultSchema(Schema):
    upload = fields.Nested(UploadSchema)
    part = fields.Integer()
    bytes = fields.Integer(metadata={"description": "archive bytes read"})
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    entries = fields.List(fields.Nested(UploadEntrySchema))


# --- archives (zip downloads) -------------------------------------------------------------------

class ArchiveQuery(QuerySchema):
    compress = fields.String(load_default="stored", validate=validate.OneOf(["stored", "deflate"]),
                             metadata={"description": "stored (default: exact Content-Length, ETag, byte ranges) or "
                                                      "deflate (streamed by stream-zip: no Content-Length, no ranges)"})
    slices = fields.String(metadata={"description": "series archives only: positions along the slice axis, a-b "
                                                    "(1-based, inclusive; or a single position), e.g. 1-50",
                                     "example": "1-50"})


# --- previews and thumbnails (derived objects) ------------------------------------------------

class PreviewQuery(QuerySchema):
    slices = fields.String(metadata={"description": "positions along the slice axis, a-b (1-based, inclusive; or a "
                                                    "single position): a stream of those slices only",
                                     "example": "100-199"})


class ThumbnailQuery(QuerySchema):
    size = fields.Integer(load_default=256, validate=validate.OneOf([256, 512]),
                          metadata={"description": "edge of the square the image is fitted in: 256 or 512"})
    format = fields.String(load_default="jpeg", validate=validate.OneOf(["jpeg", "png"]))


class SnapshotQuery(QuerySchema):
    preset = fields.String(load_default="bone", metadata={"description": "a preset of previews.snapshot_presets "
                                                                        "(bone, soft_tissue by default)"})
    mode = fields.String(load_default="vr", validate=validate.OneOf(["vr", "mip"]),
                         metadata={"description": "vr (composited volume rendering) or mip (maximum intensity)"})


class DerivedJobSchema(Schema):
    id = fields.Integer()
    status = fields.String()
    attempts = fields.Integer()
    next_attempt_at = fields.Integer()
    last_error = fields.String(allow_none=True)
    updated_at = fields.Integer()


class DerivedStatusSchema(Schema):
    study_uid = fields.String()
    series_uid = fields.String()
    state = fields.String(metadata={"description": "none, pending, running, ready or failed (the dead letter)"})
    version = fields.String(allow_none=True, metadata={"description": "of the preview being served"})
    objects = fields.List(fields.String(), metadata={"description": "derived objects made: preview, "
                                                                     "thumbnail/256.jpeg..."})
    updating = fields.Boolean(metadata={"description": "a newer version is being made; the older one is served"})
    job = fields.Nested(DerivedJobSchema)
    progress = fields.Dict(metadata={"description": "stage, done, total (slices), version"})
    skipped = fields.List(fields.Dict(), metadata={"description": "slices that could not be decoded: sop_uid, "
                                                                  "frame, reason"})


class MiniCtBoxSchema(StrictSchema):
    units = fields.String(load_default="pixels", validate=validate.OneOf(["pixels", "mm"]),
                          metadata={"description": "pixels of the source slices (x: columns, y: rows, from 0), or mm "
                                                   "in patient coordinates along the image's row (x) and column (y) "
                                                   "directions"})
    x = fields.Float(required=True)
    y = fields.Float(required=True)
    width = fields.Float(required=True)
    height = fields.Float(required=True)


class MiniCtRequestSchema(StrictSchema):
    z = fields.List(fields.Integer(strict=True), validate=validate.Length(equal=2),
                    metadata={"description": "[first, last] slice positions along the slice axis, 1-based, "
                                             "inclusive; default: every slice"})
    box = fields.Nested(MiniCtBoxSchema, metadata={"description": "default: the whole slice"})
    downsample = fields.Integer(strict=True, load_default=1, validate=validate.Range(1, 4),
                                metadata={"description": "1-4: each voxel is the mean of a factor³ block"})
    ttl = fields.Integer(strict=True, metadata={"description": "lifetime of the download URL, seconds"})


class MiniCtSchema(Schema):
    study_uid = fields.String()
    series_uid = fields.String(metadata={"description": "the new series"})
    instances = fields.List(fields.String(), metadata={"description": "its SOP Instance UIDs, lowest slice first"})
    cached = fields.Boolean(metadata={"description": "made by an earlier identical request"})
    geometry = fields.Dict(metadata={"description": "rows, columns, pixel_spacing, orientation, factor, positions"})
    download = fields.Dict(metadata={"description": "url (a signed zip download of the new series), expires_at"})
