"""The records the stores keep and hand back: instances, jobs, shares, audit lines.

Plain dataclasses with no behaviour beyond small predicates, shared by every backend
(see :mod:`storage.base` for the interfaces that take and return them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class InstanceRecord:
    clinic_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    sha256: str
    frame_index: str | None = None
    number_of_frames: int | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    dataset_sha256: str | None = None  # of the data set without file meta (duplicate detection)
    crc32: int | None = None  # of the stored bytes (zip archives name it before the data); None: older rows

    def same_dataset(self, other: "InstanceRecord") -> bool:
        """The same bytes, or the same data set under another file meta header."""
        return self.sha256 == other.sha256 or (
            self.dataset_sha256 is not None and self.dataset_sha256 == other.dataset_sha256)


@dataclass
class NewInstance:
    record: InstanceRecord
    attributes: dict[str, Any]  # index columns, see storage.attributes
    header_json: str  # the instance's DICOM JSON
    study_json: str  # study/patient-level attributes (kept from the first instance)
    series_json: str  # series-level attributes


@dataclass
class AddResult:
    outcome: Literal["stored", "duplicate", "conflict", "replaced"]
    existing: InstanceRecord | None = None


@dataclass
class SearchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False


@dataclass
class ShareRecord:
    """A study (or one series of it) of clinic ``clinic_id`` shared with a user, a clinic or a link."""

    id: str
    clinic_id: str  # the owner
    study_uid: str
    series_uid: str | None
    target_type: Literal["user", "clinic", "link"]
    target_id: str | None  # user id, clinic id; None for a link
    permissions: tuple[str, ...]  # "view", "download"
    created_by: str
    created_at: int  # milliseconds since the epoch
    expires_at: int
    target_clinic: str | None = None  # a user target: only when the user acts for this clinic
    token_hash: str | None = None  # sha256 hex of a link's token
    revoked_at: int | None = None
    revoked_by: str | None = None

    def active(self, now_ms: int) -> bool:
        return self.revoked_at is None and self.expires_at > now_ms

    def allows(self, permission: str) -> bool:
        return permission in self.permissions


@dataclass
class AuditRecord:
    """One line of the append-only audit log."""

    at: int  # milliseconds since the epoch
    action: str  # login, search, read, store, delete, share, revoke, sign, admin
    outcome: str  # ok, denied, not_found, failed
    user_id: str | None = None
    clinic_id: str | None = None  # the actor's clinic (None: unauthenticated)
    resource: str = ""  # e.g. "study:1.2.3/series:1.2.3.4"
    resource_clinic: str | None = None  # the clinic owning the resource
    client: str | None = None  # IP address, or AE title@address
    request_id: str | None = None
    door: str | None = None  # dicomweb, dimse, api, cli
    detail: str | None = None
    id: int | None = None


@dataclass
class AuditQuery:
    """Filters of :meth:`storage.base.AuditLog.search`; ``clinic_id`` matches the actor's clinic or the
    resource's (None: every clinic, and rows without one)."""

    clinic_id: str | None = None
    user_id: str | None = None
    action: str | None = None
    outcome: str | None = None
    resource: str | None = None  # prefix, e.g. "study:1.2.3"
    since_ms: int | None = None
    until_ms: int | None = None
    after_id: int | None = None  # rows with a greater id (export paging)
    newest_first: bool = True
    limit: int = 100
    offset: int = 0


@dataclass
class Job:
    """One unit of background work in the durable job queue (:class:`storage.base.JobQueue`).

    ``kind`` names the handler that runs it (``forward``, later previews...); ``(kind,
    clinic_id, key)`` is its idempotency key: enqueuing the same key again updates the one
    job instead of adding a second. ``payload`` is JSON. A job is ``pending`` (due at
    ``next_attempt_at``; *running* while a worker holds its lease, ``lease_until``) or
    ``failed`` (dead-lettered after its last attempt, with ``last_error``). Finished jobs are
    removed. ``generation`` grows each time the job is enqueued again, so that a worker that
    claimed an older generation does not remove the newer request when it finishes.
    """

    kind: str
    key: str
    clinic_id: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    next_attempt_at: int = 0  # milliseconds since the epoch; 0: now
    id: int | None = None
    status: Literal["pending", "failed"] = "pending"
    attempts: int = 0
    generation: int = 1
    lease_owner: str | None = None
    lease_until: int | None = None
    progress: dict[str, Any] | None = None
    last_error: str | None = None
    created_at: int = 0
    updated_at: int = 0

    def running(self, now_ms: int) -> bool:
        """Held by a worker whose lease has not expired."""
        return self.status == "pending" and self.lease_until is not None and self.lease_until >= now_ms


@dataclass
class Upload:
    """A zip upload of the fast API: one or more archives (parts) into one clinic.

    ``status``: ``open`` (takes archives until ``expires_at``, moved on by each part),
    ``complete`` (closed by the client; the expected count was met) or ``expired``.
    """

    id: str
    clinic_id: str
    created_by: str
    created_at: int  # milliseconds since the epoch
    expires_at: int
    status: Literal["open", "complete", "expired"] = "open"
    client: str | None = None  # the client's name, as it gave it
    expected_study: str | None = None  # every instance must be of this study (else rejected)
    expected_instances: int | None = None  # checked by completion
    bytes_received: int = 0  # archive bytes read, all parts
    parts: int = 0
    updated_at: int = 0
    completed_at: int | None = None


@dataclass
class UploadEntry:
    """One entry of an archive and what became of it: ``stored``, ``duplicate``, ``replaced``,
    ``rejected`` (``reason``, ``code`` the DICOM failure reason), ``skipped`` (not DICOM) or
    ``sidecar`` (a ``.prj``/``.json`` file kept under ``blob_key``)."""

    upload_id: str
    part: int
    name: str
    size: int  # bytes unpacked
    outcome: str
    sha256: str | None = None
    reason: str | None = None
    code: int | None = None
    sop_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    blob_key: str | None = None
    archive_offset: int | None = None  # archive bytes read when the entry was done
    at: int = 0
    id: int | None = None


@dataclass
class UploadEvent:
    """One line of an upload's event log (``entry``, ``part``, ``complete``, ``expired``)."""

    upload_id: str
    type: str
    data: dict[str, Any]
    at: int
    id: int | None = None


@dataclass
class DerivedObject:
    """An object made from a series' instances (a preview, a thumbnail, a 3D snapshot), kept
    in the blob store under ``blob_key``. ``name`` says which (``preview``,
    ``thumbnail/256.jpeg``...); ``version`` is derived from the content of the instances it
    was made from and the parameters, so a new or replaced instance makes a new version.
    ``info`` is what the generator says about it (a preview's geometry header)."""

    clinic_id: str
    study_uid: str
    series_uid: str
    name: str
    version: str
    blob_key: str
    content_type: str
    size: int
    info: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0
# --- users, projects, annotations, masks (the fast API's relational data) --------------------

@dataclass
class UserRecord:
    """A user as the identity provider's claims describe it, kept per clinic; created or
    updated from the token on first use."""

    clinic_id: str
    user_id: str  # the token's subject
    username: str | None = None
    email: str | None = None
    name: str | None = None
    organization: str | None = None
    department: str | None = None
    roles: tuple[str, ...] = ()
    created_at: int = 0  # milliseconds since the epoch
    updated_at: int = 0


@dataclass
class ProjectRecord:
    """A clinic's group of annotations (a study campaign, an AI evaluation...)."""

    id: str
    clinic_id: str
    name: str
    description: str | None = None
    created_by: str = ""
    created_at: int = 0
    updated_at: int = 0


@dataclass
class AnnotationRecord:
    """A user's annotation of a study (a series, an instance): ``type`` (``measurement``,
    ``segmentation``...), free JSON ``data`` and ``measurements``, the viewer ``software``."""

    id: str
    clinic_id: str
    user_id: str
    study_uid: str
    type: str
    series_uid: str | None = None
    sop_uid: str | None = None
    project_id: str | None = None
    data: Any = None  # JSON
    measurements: Any = None  # JSON
    software: str | None = None
    created_at: int = 0
    updated_at: int = 0


@dataclass
class MaskGroupRecord:
    """AI segmentation masks of one annotation, made by one model run."""

    id: str
    clinic_id: str
    annotation_id: str
    name: str
    model_name: str | None = None
    model_version: str | None = None
    modality: str | None = None
    slice_count: int | None = None
    mask_type: str = "segmentation"
    description: str | None = None
    created_by: str = ""
    created_at: int = 0


@dataclass
class MaskUpload:
    """A mask object a signed PUT URL was issued for, not yet recorded by ``complete``."""

    group_id: str
    slice_index: int
    label: str
    clinic_id: str
    blob_key: str
    size: int
    sha256: str  # hex
    sop_uid: str | None = None
    expires_at: int = 0
    created_by: str = ""


@dataclass
class MaskRecord:
    """One recorded mask: a PNG of one slice and one label, checked by ``complete``."""

    id: str
    group_id: str
    clinic_id: str
    annotation_id: str
    slice_index: int
    label: str
    blob_key: str
    size: int
    sha256: str
    width: int
    height: int
    content_type: str = "image/png"
    sop_uid: str | None = None
    created_by: str = ""
    created_at: int = 0


@dataclass
class PresignedRequest:
    """A request a client may send without credentials until it expires (a blob store's
    presigned PUT): the URL, and the headers to send exactly as given (they are signed)."""

    url: str
    method: str
    headers: dict[str, str] = field(default_factory=dict)
    expires_in: int = 0
