"""The backend interfaces: small cores every implementation provides.

A backend class is found by name through the entry-point groups
``gateway.blob_stores`` and ``gateway.index_stores`` (see :mod:`storage.registry`)
and is built with ``Backend.from_settings(settings)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, Protocol, runtime_checkable

from storage.query import Query


@runtime_checkable
class BlobStore(Protocol):
    """Immutable objects under string keys (``a/b/c.dcm``)."""

    def put_file(self, key: str, path: Path) -> None:
        """Store the local file at ``path`` under ``key``, atomically, consuming the file.

        After it returns, the object is durable and visible as a whole; an
        interrupted call leaves no object under ``key``.
        """

    def open(self, key: str) -> BinaryIO:
        """A seekable binary reader; raises :class:`storage.errors.ObjectNotFound`."""

    def delete(self, key: str) -> None:
        """Remove the object; no error when it does not exist."""

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (for checks and migrations)."""

    def ping(self) -> None:
        """Raise :class:`storage.errors.Unavailable` when the store cannot be used."""

    def staging_dir(self) -> Path:
        """A local folder for spooling incoming objects before :meth:`put_file`."""


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

    def same_dataset(self, other: "InstanceRecord") -> bool:
        """The same bytes, or the same data set under another file meta header."""
        return self.sha256 == other.sha256 or (
            self.dataset_sha256 is not None and self.dataset_sha256 == other.dataset_sha256)


@dataclass
class NewInstance:
    record: InstanceRecord
    attributes: dict[str, Any]  # index columns, see gateway.attributes
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
class ForwardItem:
    """One instance to send to one remote AE (the durable forward queue)."""

    clinic_id: str
    destination: str  # AE title, declared in dimse.destinations
    study_uid: str
    series_uid: str
    sop_uid: str
    rule: str = ""
    id: int | None = None
    status: Literal["pending", "failed"] = "pending"
    attempts: int = 0
    next_attempt_at: int = 0  # milliseconds since the epoch
    last_error: str | None = None
    created_at: int = 0
    updated_at: int = 0
    lease_owner: str | None = None


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
    """Filters of :meth:`IndexStore.search_audit`; ``clinic_id`` matches the actor's clinic or the
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


@runtime_checkable
class IndexStore(Protocol):
    def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names applied."""

    def ping(self) -> None: ...

    def find_instance(self, clinic_id: str, sop_uid: str) -> InstanceRecord | None: ...

    def add_instance(self, new: NewInstance, *, replace: bool) -> AddResult:
        """Index one instance in one transaction.

        Same SOP Instance UID with the same sha256 → ``duplicate``; with other bytes
        → ``conflict`` unless ``replace``, then ``replaced`` (``existing`` is the old
        record, whose blob the caller deletes). Raises :class:`storage.errors.Conflict`
        when the series is already indexed under another study.
        """

    def add_instances(self, items: list[NewInstance], *, replace: bool) -> list["AddResult | Exception"]:
        """:meth:`add_instance` for several instances in one transaction; an item that
        conflicts gets its :class:`storage.errors.Conflict` as result, the others are kept."""

    def search(self, query: Query) -> SearchResult:
        """Rows of the query's level: column values by name, plus ``study_json`` /
        ``series_json`` (and ``header_json`` when ``with_headers``)."""

    def instances(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[InstanceRecord]:
        """Stored instances in series, then instance-number order."""

    def instance_headers(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                         sop_uid: str | None = None) -> Iterator[str]:
        """Each instance's DICOM JSON text, in the same order as :meth:`instances`."""

    def delete(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None) -> list[InstanceRecord]:
        """Remove the rows in one transaction; return the removed instances."""

    def counts(self, clinic_id: str | None = None) -> dict[str, int]:
        """Numbers of patients, studies, series and instances (for status and tests)."""

    def close(self) -> None: ...

    # --- the forward queue (gateway.dimse.forwarding) ------------------------------
    def enqueue_forwards(self, items: list[ForwardItem], *, now_ms: int) -> None:
        """Queue instances for sending, in one transaction. An instance already queued for the
        same destination is queued again from scratch (pending, no attempts, lease dropped)."""

    def claim_forwards(self, owner: str, *, now_ms: int, lease_ms: int, limit: int) -> list[ForwardItem]:
        """Lease up to ``limit`` due pending items to ``owner`` (oldest due first); an item leased
        by another owner is not due until its lease has expired."""

    def finish_forward(self, item_id: int, owner: str) -> bool:
        """Remove a sent item, unless it was queued again since ``owner`` claimed it."""

    def fail_forward(self, item_id: int, owner: str, *, error: str, next_attempt_ms: int,
                     give_up: bool, now_ms: int) -> bool:
        """Count a failed attempt: pending again at ``next_attempt_ms``, or ``failed`` if ``give_up``."""

    def forward_lease_owners(self) -> list[str]:
        """Owners of current leases (to release those of workers that died)."""

    def release_forwards(self, owner: str) -> int:
        """Drop the leases of ``owner``: its items are due again at once."""

    def list_forwards(self, *, status: str | None = None, clinic_id: str | None = None,
                      limit: int = 100, offset: int = 0) -> list[ForwardItem]:
        """Queued items in queue order, optionally of one status and clinic."""

    def retry_forwards(self, *, ids: list[int] | None = None, clinic_id: str | None = None,
                       now_ms: int) -> int:
        """Make failed items (all, or those of ``ids``) pending and due now; return how many."""

    def forward_counts(self, clinic_id: str | None = None) -> dict[str, int]:
        """Numbers of pending and failed items."""

    # --- shares (auth.shares) -------------------------------------------------------
    def add_share(self, share: ShareRecord) -> None:
        """Record a new share (its ``id`` and ``token_hash`` are unique)."""

    def get_share(self, share_id: str) -> ShareRecord | None: ...

    def share_by_token(self, token_hash: str) -> ShareRecord | None:
        """The link share whose token has this sha256 (active or not)."""

    def list_shares(self, *, clinic_id: str | None = None, target_type: str | None = None,
                    target_id: str | None = None, active_at: int | None = None, limit: int = 100,
                    offset: int = 0) -> list[ShareRecord]:
        """Shares owned by ``clinic_id`` and/or with that target, newest first; ``active_at``:
        only those neither revoked nor expired at that time."""

    def active_shares(self, *, user_id: str | None, clinic_id: str | None, now_ms: int) -> list[ShareRecord]:
        """Shares targeting this user (acting for ``clinic_id`` when the share names a
        ``target_clinic``) or this clinic, neither revoked nor expired at ``now_ms``."""

    def revoke_share(self, share_id: str, *, by: str, now_ms: int) -> bool:
        """Mark a share revoked; False when it does not exist or was revoked already."""

    def clinics_with_study(self, study_uid: str) -> list[str]:
        """The clinics holding a study with this UID (for the audit of refused accesses only)."""

    # --- the audit log (auth.audit) ---------------------------------------------------
    def append_audit(self, records: list[AuditRecord]) -> None:
        """Append records in one transaction; the log is never updated or deleted from."""

    def search_audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Records matching every filter of ``query``, by id (newest first unless told)."""
