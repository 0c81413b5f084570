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
