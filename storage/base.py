"""The store interfaces: one small protocol per kind of store.

- :class:`BlobStore`: immutable objects under string keys (DICOM files, derived objects);
- :class:`InstanceIndex`: the instances, their series, studies and patients, and the one
  query model's searches (:class:`storage.query.Query`);
- :class:`JobQueue`: the durable job queue (forwarding, previews...): lease with expiry,
  retries, dead letter, idempotency key, progress;
- :class:`ShareStore`: shares of studies with users, clinics and links;
- :class:`AuditLog`: the append-only audit log;
- :class:`UploadStore`: zip uploads of the fast API, their entries and event logs;
- :class:`DerivedStore`: the records of objects derived from series (previews, thumbnails).
- :class:`UserStore`, :class:`ProjectStore`, :class:`AnnotationStore`, :class:`MaskStore`:
  the users (from their tokens' claims), projects, annotations and AI mask groups and masks
  of the fast API.
- :class:`MetadataStore`: versioned image metadata records with their history
  (``gateway.metadata_stores``: SQL in the index database, DynamoDB).

A backend is found by name through an entry-point group (see :mod:`storage.registry`) and is
built with ``Backend.from_settings(settings)``; bad settings raise :class:`ValueError`. Blob
stores are a kind of their own (``gateway.blob_stores``). An *index backend*
(``gateway.index_stores``: SQLite, PostgreSQL) is one database that offers several of the
other stores at once, as the attributes named in its ``offers`` (see :class:`IndexBackend`),
and owns their schema migrations. Each kind has one contract suite in ``tests/contract/``
that every implementation passes.

Backends raise :mod:`storage.errors` (``Unavailable`` when the store cannot be reached);
the gateway's services translate those into the errors its front doors answer with.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator, Protocol, Sequence, runtime_checkable

from storage.metadata import MetadataKey, MetadataQuery, MetadataRecord
from storage.query import Query
from storage.records import (
    AddResult,
    AnnotationRecord,
    AuditQuery,
    AuditRecord,
    DerivedObject,
    InstanceRecord,
    Job,
    MaskGroupRecord,
    MaskRecord,
    MaskUpload,
    NewInstance,
    PresignedRequest,
    ProjectRecord,
    SearchResult,
    ShareRecord,
    Upload,
    UploadEntry,
    UploadEvent,
    UserRecord,
)


@runtime_checkable
class BlobStore(Protocol):
    """Immutable objects under string keys (``a/b/c.dcm``)."""

    def put_file(self, key: str, path: Path) -> None:
        """Store the local file at ``path`` under ``key``, atomically, consuming the file.

        After it returns, the object is durable and visible as a whole; an
        interrupted call leaves no object under ``key``.
        """

    def put_files(self, items: Sequence[tuple[str, Path]]) -> list[Exception | None]:
        """:meth:`put_file` for several ``(key, path)`` pairs, each with the same guarantee
        once the call returns, done together so that their durability work overlaps (a
        folder syncs its files in parallel and each directory once; S3 uploads several at
        once). Per item: None when stored, else the :mod:`storage.errors` error it got (the
        others are still stored)."""

    def sync_staged(self, path: Path) -> None:
        """A head start for :meth:`put_file`: make the staged file durable now, while the
        caller has other work to do (a no-op where ``put_file`` takes the bytes elsewhere).
        ``put_file`` keeps its guarantee whether or not this was called."""

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

    def presigned_put(self, key: str, *, expires_in: int | None = None, content_type: str | None = None,
                      content_length: int | None = None, sha256: str | None = None) -> PresignedRequest | None:
        """A PUT a client sends straight to the store, without credentials, until it expires:
        the object must have exactly ``content_length`` bytes, this ``content_type`` and this
        ``sha256`` (hex) where the store enforces them. None: the store cannot take uploads
        itself, the gateway serves the upload URL (and enforces all three while streaming)."""


@runtime_checkable
class InstanceIndex(Protocol):
    """Instances with the attributes QIDO-RS and C-FIND match on, per clinic."""

    def find_instance(self, clinic_id: str, sop_uid: str) -> InstanceRecord | None: ...

    def add_instance(self, new: NewInstance, *, replace: bool) -> AddResult:
        """Index one instance in one transaction.

        Same SOP Instance UID with the same sha256 → ``duplicate``; with other bytes
        → ``conflict`` unless ``replace``, then ``replaced`` (``existing`` is the old
        record, whose blob the caller deletes). Raises :class:`storage.errors.Conflict`
        when the series is already indexed under another study.
        """

    def add_instances(self, items: list[NewInstance], *, replace: bool) -> list[AddResult | Exception]:
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

    def set_crc32(self, clinic_id: str, sop_uid: str, sha256: str, crc32: int) -> bool:
        """Record the CRC-32 of an instance indexed without one (rows of older versions), only
        while it is still the instance with these bytes (``sha256``) and has none; True when a
        row was updated."""

    def delete(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None) -> list[InstanceRecord]:
        """Remove the rows in one transaction; return the removed instances."""

    def counts(self, clinic_id: str | None = None) -> dict[str, int]:
        """Numbers of patients, studies, series and instances (for status and tests)."""

    def clinic_ids(self) -> list[str]:
        """Every clinic that holds a study (for migrations and operators)."""

    def clinics_with_study(self, study_uid: str) -> list[str]:
        """The clinics holding a study with this UID (for the audit of refused accesses only)."""


@runtime_checkable
class JobQueue(Protocol):
    """The durable job queue, shared by every process and machine on the same database.

    A worker *claims* due jobs with a lease (``owner``, expiry): nobody else can claim
    them until it finishes, fails, releases them or the lease expires (the worker died:
    the next claimer takes them over, counting the lost run as an attempt). Times are
    milliseconds since the epoch, passed in by the caller.
    """

    def enqueue(self, jobs: list[Job], *, now_ms: int) -> None:
        """Queue jobs in one transaction. A job whose ``(kind, clinic_id, key)`` is queued
        already is queued again from scratch: new payload, pending, due at its
        ``next_attempt_at`` (0: now), no attempts, next ``generation``; a worker holding
        it keeps its lease, and the job runs again after it."""

    def claim(self, owner: str, *, kinds: Sequence[str], now_ms: int, lease_ms: int, limit: int) -> list[Job]:
        """Lease up to ``limit`` due pending jobs of ``kinds`` to ``owner``, oldest due first.
        A job whose lease expired is due again (its attempts count the lost run). Concurrent
        claimers never get the same job."""

    def heartbeat(self, owner: str, *, now_ms: int, lease_ms: int, job_id: int | None = None,
                  progress: dict | None = None) -> int:
        """Extend ``owner``'s leases (of job ``job_id`` only, recording its ``progress``, when
        given); return how many it still held (0: they were taken over)."""

    def finish(self, job: Job, owner: str) -> bool:
        """Remove a done job, unless it was queued again since ``owner`` claimed it (then it
        is released, due again at once); False in that case or when not ``owner``'s."""

    def fail(self, job: Job, owner: str, *, error: str, next_attempt_ms: int, give_up: bool, now_ms: int) -> bool:
        """Count a failed attempt: pending again at ``next_attempt_ms``, or ``failed`` (the
        dead letter) if ``give_up``. A job queued again since the claim is only released."""

    def release(self, owner: str, *, now_ms: int, error: str | None = None) -> int:
        """Drop every lease of ``owner``: its jobs are due again at once. With ``error`` (the
        owner died), each counts as a failed attempt with that error."""

    def lease_owners(self) -> list[str]:
        """Owners of current leases (to release those of workers that died)."""

    def get(self, job_id: int) -> Job | None: ...

    def list_jobs(self, *, kind: str | None = None, status: str | None = None, clinic_id: str | None = None,
                  key: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """Jobs in queue order (by id), optionally of one kind, status, clinic and key."""

    def retry(self, *, kind: str | None = None, ids: list[int] | None = None, clinic_id: str | None = None,
              now_ms: int) -> int:
        """Make failed jobs (all, or those of ``ids``) pending from their first attempt, due
        now; return how many."""

    def counts(self, *, kind: str | None = None, clinic_id: str | None = None, now_ms: int) -> dict[str, int]:
        """Numbers of ``pending`` (not leased), ``running`` (leased) and ``failed`` jobs."""


@runtime_checkable
class ShareStore(Protocol):
    def add_share(self, share: ShareRecord) -> None:
        """Record a new share (its ``id`` and ``token_hash`` are unique)."""

    def get_share(self, share_id: str) -> ShareRecord | None: ...

    def share_by_token(self, token_hash: str) -> ShareRecord | None:
        """The link share whose token has this sha256 (active or not)."""

    def list_shares(self, *, clinic_id: str | None = None, target_type: str | None = None,
                    target_id: str | None = None, active_at: int | None = None, limit: int = 100,
                    offset: int = 0, study_uid: str | None = None) -> list[ShareRecord]:
        """Shares owned by ``clinic_id`` and/or with that target (of one study: ``study_uid``),
        newest first; ``active_at``: only those neither revoked nor expired at that time."""

    def active_shares(self, *, user_id: str | None, clinic_id: str | None, now_ms: int) -> list[ShareRecord]:
        """Shares targeting this user (acting for ``clinic_id`` when the share names a
        ``target_clinic``) or this clinic, neither revoked nor expired at ``now_ms``."""

    def revoke_share(self, share_id: str, *, by: str, now_ms: int) -> bool:
        """Mark a share revoked; False when it does not exist or was revoked already."""


@runtime_checkable
class AuditLog(Protocol):
    def append(self, records: list[AuditRecord], *, durable: bool = True) -> None:
        """Append records in one transaction; the log is never updated or deleted from.

        ``durable=False``: the commit need not wait for the disk. The records are there for
        every reader at once and survive the gateway being killed; a power loss or a crash of
        the database server within about a second of the commit may lose them."""

    def search(self, query: AuditQuery) -> list[AuditRecord]:
        """Records matching every filter of ``query``, by id (newest first unless told)."""


@runtime_checkable
class UploadStore(Protocol):
    """Uploads, their entries and their event logs (ids of events grow with time)."""

    def create(self, upload: Upload) -> None: ...

    def get(self, upload_id: str) -> Upload | None: ...

    def list_uploads(self, clinic_id: str, *, status: str | None = None, limit: int = 100,
                     offset: int = 0) -> list[Upload]:
        """A clinic's uploads, newest first."""

    def start_part(self, upload_id: str, *, now_ms: int, expires_at: int) -> int | None:
        """Count a new archive of an open upload and move its expiry; its number, or None
        when the upload is not open."""

    def record(self, upload_id: str, *, entries: list[UploadEntry] = (), events: list[tuple[str, dict]] = (),
               received: int = 0, now_ms: int) -> None:
        """Add entries and events, and ``received`` archive bytes, in one transaction."""

    def reject_entries(self, upload_id: str, part: int, names: list[str], *, reason: str, code: int) -> int:
        """Mark entries of a part rejected after the fact (a symlink seen in the central directory)."""

    def entries(self, upload_id: str) -> list[UploadEntry]:
        """Every entry of every part, in the order they were recorded."""

    def events(self, upload_id: str, *, after_id: int = 0, limit: int = 1000) -> list[UploadEvent]:
        """Events with an id above ``after_id``, oldest first."""

    def finish(self, upload_id: str, status: str, *, now_ms: int, events: list[tuple[str, dict]] = ()) -> bool:
        """Move an open upload to ``status`` (complete, expired) with its events; False when
        it was not open (another request did it first)."""


@runtime_checkable
class DerivedStore(Protocol):
    """Which derived objects each series has: one record per (clinic, series, name), its
    latest version (the blob holds the bytes)."""

    def put(self, objects: list[DerivedObject]) -> list[DerivedObject]:
        """Record these objects in one transaction, each replacing the record of the same
        (clinic, series, name); returns the records they replaced."""

    def get(self, clinic_id: str, series_uid: str, name: str) -> DerivedObject | None: ...

    def for_series(self, clinic_id: str, series_uid: str) -> list[DerivedObject]:
        """Every derived object of a series, by name."""

    def delete(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
               names: Sequence[str] | None = None) -> list[DerivedObject]:
        """Remove the records of a study (or one series, or some names of it); returns them."""


@runtime_checkable
class UserStore(Protocol):
    """Users per clinic, as their identity tokens describe them."""

    def upsert_user(self, user: UserRecord) -> UserRecord:
        """Create the user, or update its profile (``created_at`` kept); the stored record."""

    def get_user(self, clinic_id: str, user_id: str) -> UserRecord | None: ...


@runtime_checkable
class ProjectStore(Protocol):
    def add_project(self, project: ProjectRecord) -> None:
        """Record a new project; :class:`storage.errors.Conflict` when the clinic has one of that name."""

    def get_project(self, project_id: str) -> ProjectRecord | None: ...

    def list_projects(self, clinic_id: str, *, limit: int = 100, offset: int = 0) -> list[ProjectRecord]:
        """A clinic's projects by name."""

    def update_project(self, project_id: str, changes: dict, *, now_ms: int) -> ProjectRecord | None:
        """Set ``name`` / ``description``; None when there is no such project, Conflict on a taken name."""


@runtime_checkable
class AnnotationStore(Protocol):
    def add_annotation(self, annotation: AnnotationRecord) -> None: ...

    def get_annotation(self, annotation_id: str) -> AnnotationRecord | None: ...

    def list_annotations(self, clinic_id: str, *, study_uid: str | None = None, series_uid: str | None = None,
                         project_id: str | None = None, user_id: str | None = None, type: str | None = None,
                         limit: int = 100, offset: int = 0) -> list[AnnotationRecord]:
        """A clinic's annotations matching every filter given, newest first."""

    def update_annotation(self, annotation_id: str, changes: dict, *, now_ms: int) -> AnnotationRecord | None:
        """Set the fields named in ``changes`` (``type``, ``data``, ``measurements``, ``software``,
        ``project_id``); the updated record, None when there is no such annotation."""

    def delete_annotation(self, annotation_id: str) -> bool:
        """Remove it with its mask groups, masks and pending mask uploads; False when absent."""

    def delete_study_annotations(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                                 sop_uid: str | None = None) -> list[AnnotationRecord]:
        """Remove a clinic's annotations of a study (of one series, of one instance) as
        :meth:`delete_annotation` does; the removed ones."""


@runtime_checkable
class MaskStore(Protocol):
    """Mask groups of annotations, their masks, and the uploads signed for them."""

    def add_group(self, group: MaskGroupRecord) -> None:
        """Record a group; :class:`storage.errors.ObjectNotFound` when its annotation does not exist."""

    def get_group(self, group_id: str) -> MaskGroupRecord | None: ...

    def list_groups(self, annotation_id: str) -> list[MaskGroupRecord]:
        """An annotation's groups, oldest first."""

    def delete_group(self, group_id: str) -> bool:
        """Remove the group with its masks and pending uploads; False when absent."""

    def add_uploads(self, uploads: list[MaskUpload]) -> None:
        """Record signed uploads in one transaction; one of the same (group, slice, label) is replaced."""

    def uploads(self, group_id: str) -> list[MaskUpload]:
        """A group's pending uploads, by slice and label."""

    def record_masks(self, masks: list[MaskRecord]) -> list[MaskRecord]:
        """Record masks in one transaction, removing their pending uploads. A mask of the same
        (group, slice, label) is updated (its id kept); the stored records, in the given order."""

    def list_masks(self, group_id: str, *, limit: int = 10_000, offset: int = 0) -> list[MaskRecord]:
        """A group's masks by slice and label."""

    def get_mask(self, mask_id: str) -> MaskRecord | None: ...


@runtime_checkable
class MetadataStore(Protocol):
    """Image metadata records (:mod:`storage.metadata`), one per clinic and object key, each
    write a new ``version`` kept in the record's history.

    Writes are conditional and atomic in the store (SQL: ``UPDATE ... WHERE version = ?`` in
    the transaction that adds the history row; DynamoDB: a ``ConditionExpression`` on
    ``version`` in the transaction that puts the history item): of concurrent writers made
    against the same version exactly one succeeds, the others get
    :class:`storage.errors.VersionConflict` carrying the current record. No update is lost.
    """

    def get(self, clinic_id: str, key: MetadataKey) -> MetadataRecord | None: ...

    def put(self, record: MetadataRecord, *, expected_version: int | None) -> MetadataRecord:
        """Store ``record`` as version ``expected_version + 1``; ``expected_version=None``
        creates version 1 and only when no record exists. Returns what was stored."""

    def patch_viewer_state(self, clinic_id: str, key: MetadataKey, changes: dict, *, expected_version: int,
                           updated_by: str, now_ms: int) -> MetadataRecord:
        """Merge ``changes`` into the viewer state of version ``expected_version``
        (:func:`storage.metadata.merge_viewer_state`) and store it as the next version.
        :class:`storage.errors.ObjectNotFound` when there is no record."""

    def search(self, query: MetadataQuery) -> list[MetadataRecord]:
        """Records matching every filter, in the query's order, ``limit`` from ``offset``."""

    def history(self, clinic_id: str, key: MetadataKey, *, limit: int = 100,
                before_version: int | None = None) -> list[MetadataRecord]:
        """Every stored version (the current one too), newest first."""

    def set_share(self, clinic_id: str, study_uid: str, series_uid: str, share: dict | None, *, stamp: int) -> int:
        """Mirror the share state of a series (``share``: ``{"targets": [...]}``, None when not
        shared) into every record of it, every variant, unless a mirror write with a later
        ``stamp`` came first. Changes nothing else (not the version, not the history); a record
        write never changes it. How many records were set."""

    def restore(self, versions: list[MetadataRecord]) -> str:
        """Copy one record as it is into this store (a migration between stores): ``versions``
        is every version of it, oldest first, the last the current one with its share state.
        Version numbers, times and owners are kept. ``"copied"`` when the store had no such
        record; ``"updated"`` when it had an older version (the versions it lacked are added);
        ``"already there"`` when it has the same current version (the share state is still
        set, unless a later mirror write came first). :class:`storage.errors.VersionConflict`
        (nothing changed) when it has a newer version, or another record under that version."""

    def delete_records(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                       sop_uid: str | None = None) -> int:
        """Remove the records (every variant) of a study, of one series of it (``series_uid``)
        or of one instance (``series_uid`` and ``sop_uid``), with their history; how many
        records there were."""

    def ping(self) -> None:
        """Raise :class:`storage.errors.Unavailable` when the store cannot be used."""


# The stores an index backend may offer, by attribute name.
INDEX_KINDS: dict[str, type] = {
    "instances": InstanceIndex,
    "jobs": JobQueue,
    "shares": ShareStore,
    "audit": AuditLog,
    "uploads": UploadStore,
    "derived": DerivedStore,
    "users": UserStore,
    "projects": ProjectStore,
    "annotations": AnnotationStore,
    "masks": MaskStore,
}


@runtime_checkable
class IndexBackend(Protocol):
    """One database offering the stores named in ``offers`` (keys of :data:`INDEX_KINDS`) as
    attributes of the same names, e.g. ``backend.jobs``; it owns their schema."""

    offers: tuple[str, ...]

    def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names applied."""

    def ping(self) -> None:
        """Raise :class:`storage.errors.Unavailable` when the database cannot be used."""

    def close(self) -> None: ...
