"""The one ingest path: every instance, from STOW-RS, C-STORE or a zip upload, is stored here.

1. ``stage``: spool the bytes to a local file (bounded memory); ``inspect``: hash them (on
   another thread) while parsing the header only, validate, locate the pixel data frames.
   A request's instances go through a :class:`StagingPipeline`: each is inspected while the
   next one arrives;
2. ``commit``: authorize, de-duplicate, write the blobs (atomic; a request's blobs together,
   so that their syncs overlap), index them in one transaction, emit ``instance_stored``
   (plugins queue their jobs: forwarding, previews).

A blob is written before its index row and under a content-derived key, so a
crash at any point leaves either the whole instance stored and indexed or an
unreferenced blob that nothing shows.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import struct
import tempfile
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

from auth import policy
from auth.audit import OK, door_var, resource_name
from auth.base import Principal
from gateway import headers, metrics
from gateway.errors import (
    BackendUnavailable,
    DatasetMismatch,
    GatewayError,
    InstanceExists,
    InvalidDicom,
    NotAuthorized,
    PayloadTooLarge,
    StudyMismatch,
)
from gateway.imaging import PixelDataError, index_pixel_data
from storage.base import BlobStore, InstanceIndex
from storage.errors import Conflict, StorageError, Unavailable
from storage.records import InstanceRecord, NewInstance

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


@dataclass
class InstanceOutcome:
    """What happened to one instance; front doors render it in their own format."""

    status: str  # stored | replaced | duplicate | failed
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    error: GatewayError | None = None
    record: InstanceRecord | None = None
    modality: str | None = None  # of the instance's series (0008,0060), for plugins' rules

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass
class StagedInstance:
    path: Path | None
    size: int
    sha256: str
    dataset_sha256: str | None = None
    crc32: int | None = None
    header: headers.Header | None = None
    frame_index: str | None = None
    attributes: dict | None = None  # index columns, and the DICOM JSON: read by inspect
    body: dict | None = None
    error: GatewayError | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def rejected(cls, error: GatewayError) -> "StagedInstance":
        """A part refused before any byte was spooled."""
        return cls(None, 0, "", error=error)

    def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _chunks(source: Iterable[bytes] | BinaryIO) -> Iterable[bytes]:
    if hasattr(source, "read"):
        while chunk := source.read(_CHUNK):
            yield chunk
    else:
        yield from source


class _FileDigests:
    """sha256 of the whole file and of its data set (after the file meta), and the file's
    CRC-32 (what a zip archive of it names before the data), in one pass."""

    LOOK_AHEAD = 64 * 1024  # file meta groups are a few hundred bytes

    def __init__(self):
        self.file = hashlib.sha256()
        self.crc32 = 0
        self.dataset: hashlib._Hash | None = None
        self._head = bytearray()
        self._failed = False

    def update(self, chunk: bytes) -> None:
        self.file.update(chunk)
        self.crc32 = zlib.crc32(chunk, self.crc32)
        if self.dataset is not None:
            self.dataset.update(chunk)
        elif not self._failed:
            self._head += chunk
            if len(self._head) >= self.LOOK_AHEAD:
                self._start(at_end=False)

    def _start(self, *, at_end: bool) -> None:
        head = self._head
        offset = headers.dataset_offset(io.BytesIO(head))
        if offset > len(head) or (not at_end and offset + 8 > len(head)):
            self._failed = True  # the caller hashes from the file instead
        else:
            self.dataset = hashlib.sha256(memoryview(head)[offset:])
        self._head = bytearray()

    def dataset_hexdigest(self) -> str | None:
        if self.dataset is None and not self._failed:
            self._start(at_end=True)
        return self.dataset.hexdigest() if self.dataset is not None else None


def _sha256_from(fp: BinaryIO, offset: int) -> str:
    digest = hashlib.sha256()
    fp.seek(offset)
    while chunk := fp.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


_HASH_THREADS = 4
_hash_executor: ThreadPoolExecutor | None = None
_hash_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    """Threads that hash spooled instances (made on first use: after a server's fork)."""
    global _hash_executor
    with _hash_lock:
        if _hash_executor is None:
            _hash_executor = ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="ingest-hash")
        return _hash_executor


def _digest_file(path: Path) -> _FileDigests:
    digest = _FileDigests()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest


class StagingPipeline:
    """Stage a request's instances one after the other on the caller's thread (which goes
    on receiving) while the ones already spooled are inspected (hashed, parsed) on other
    threads. :meth:`results` waits for them and gives them in arrival order; leaving the
    ``with`` block on an error discards them all."""

    THREADS = 2

    def __init__(self, ingest: "IngestService"):
        self._ingest = ingest
        self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="ingest-inspect")
        self._items: list[Future | StagedInstance] = []

    def __enter__(self) -> "StagingPipeline":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for item in self._wait():
                item.discard()
        self._pool.shutdown(wait=True)

    def __len__(self) -> int:
        return len(self._items)

    def stage(self, source: Iterable[bytes] | BinaryIO) -> None:
        staged = self._ingest.stage(source, inspect=False)
        self._items.append(self._pool.submit(self._inspect, staged) if staged.error is None else staged)

    def _inspect(self, staged: StagedInstance) -> StagedInstance:
        try:
            return self._ingest.inspect(staged)
        except BaseException:
            staged.discard()
            raise

    def add(self, staged: StagedInstance) -> None:
        """An instance refused before any byte was spooled (:meth:`StagedInstance.rejected`)."""
        self._items.append(staged)

    def results(self) -> list[StagedInstance]:
        """Every instance, inspected, in order (the pipeline is empty afterwards)."""
        return self._wait(raise_first=True)

    def _wait(self, *, raise_first: bool = False) -> list[StagedInstance]:
        done, failure = [], None
        for item in self._items:
            if isinstance(item, Future):
                try:
                    item = item.result()
                except BaseException as exc:  # an OSError of our own staging file
                    failure = failure or exc
                    continue
            done.append(item)
        self._items = []
        if failure is not None and raise_first:
            for item in done:
                item.discard()
            raise failure
        return done


class IngestService:
    """``access`` is :class:`auth.access.AccessControl`; ``jobs`` (:class:`gateway.services.jobs.JobService`)
    is handed to the ``instance_stored`` hook, where plugins queue their work."""

    def __init__(self, blobs: BlobStore, index: InstanceIndex, settings, plugin_manager, *, access, jobs):
        self.access = access
        self.blobs = blobs
        self.index = index
        self.settings = settings
        self.pm = plugin_manager
        self.jobs = jobs
        self.max_bytes = settings["ingest.max_instance_bytes"]
        self.max_depth = settings["ingest.max_sequence_depth"]
        self.replace_duplicates = settings["ingest.duplicate_policy"] == "replace"

    # --- stage ---------------------------------------------------------------------
    def stage(self, source: Iterable[bytes] | BinaryIO, *, inspect: bool = True) -> StagedInstance:
        """Spool and check one instance. Parse errors are recorded on the result, not raised;
        errors of the source itself (a broken multipart body) propagate after cleanup.
        ``inspect=False`` only spools: :meth:`inspect` hashes and parses later (on another
        thread while the next instance arrives: see :class:`StagingPipeline`)."""
        staging = self.blobs.staging_dir()
        try:
            fd, name = tempfile.mkstemp(dir=staging, suffix=".part")
        except FileNotFoundError:  # the folder was removed under a running gateway
            staging.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=staging, suffix=".part")
        path = Path(name)
        size = 0
        too_large = False
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in _chunks(source):
                    size += len(chunk)
                    if size > self.max_bytes:
                        too_large = True  # keep draining the source, store nothing
                        continue
                    out.write(chunk)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        staged = StagedInstance(path, size, "")  # digested by inspect()
        if too_large:
            staged.error = PayloadTooLarge(
                f"instance of {size} bytes exceeds ingest.max_instance_bytes={self.max_bytes}")
            return staged
        return self.inspect(staged) if inspect else staged

    def inspect(self, staged: StagedInstance) -> StagedInstance:
        """Hash a spooled instance and parse its header: what it is, whether it is valid,
        where its frames are. The hashing (which releases the GIL) and the blob store's early
        sync of the file run on another thread while this one parses."""
        hashing = None
        if not staged.sha256 and staged.path is not None:
            hashing = _hash_pool().submit(self._digest_and_sync, staged.path)
        try:
            if staged.error is None and staged.header is None:
                try:
                    self._inspect(staged)
                except GatewayError as exc:
                    staged.error = exc
                except OSError:  # the staging file could not be read: ours, not the instance's
                    raise
                except Exception as exc:  # what a malformed file makes pydicom raise, whatever its type
                    logger.debug("instance not readable", exc_info=True)
                    staged.error = InvalidDicom(f"DICOM file cannot be read: {type(exc).__name__}: {exc}")
        finally:
            if hashing is not None:
                digest = hashing.result()
                staged.sha256, staged.crc32 = digest.file.hexdigest(), digest.crc32
                staged.dataset_sha256 = digest.dataset_hexdigest()
        if staged.dataset_sha256 is None and staged.error is None and staged.path is not None:
            with open(staged.path, "rb") as fp:  # file meta longer than the digests' look-ahead
                staged.dataset_sha256 = _sha256_from(fp, headers.dataset_offset(fp))
        return staged

    def _digest_and_sync(self, path: Path) -> _FileDigests:
        digest = _digest_file(path)
        try:
            self.blobs.sync_staged(path)  # a head start on the blob write, off the caller's thread
        except StorageError:
            logger.debug("early sync of %s failed; the blob write syncs it", path, exc_info=True)
        return digest

    def _inspect(self, staged: StagedInstance) -> None:
        """Everything that parses the instance happens here (on the commit threads of an
        upload), so that its failures are this instance's alone."""
        if staged.size == 0:
            raise InvalidDicom("empty body: no DICOM bytes")
        with open(staged.path, "rb") as fp:
            ds = headers.read_header(fp, strict=True)
            headers.check_elements(ds.file_meta, self.max_depth)
            header = headers.validate(ds)
            staged.header = header  # from here on a failure names the instance
            headers.check_elements(ds, self.max_depth)
            fp.seek(0)
            try:
                frame_index = index_pixel_data(fp, ds)
            except (PixelDataError, EOFError, ValueError, OSError, struct.error) as exc:
                raise InvalidDicom(f"pixel data cannot be read (truncated or malformed file?): {exc}") from None
        if frame_index is not None:
            end = frame_index.pixel_data_offset + (frame_index.pixel_data_length or 0)
            # Undefined length (encapsulated) data: the fragments must be in the file too.
            end = max([end] + [offset + length for frame in frame_index.frames for offset, length in frame])
            if end > staged.size:
                raise InvalidDicom(
                    f"file is truncated: pixel data ends at byte {end}, file has {staged.size} bytes")
            staged.frame_index = frame_index.to_json()
            staged.extra["number_of_frames"] = frame_index.number_of_frames
            staged.extra["has_pixel_data"] = True
        attributes = headers.index_attributes(ds)
        if attributes.get("number_of_frames") is None:  # single-frame IODs omit NumberOfFrames
            attributes["number_of_frames"] = staged.extra.get("number_of_frames")
        staged.attributes = attributes
        staged.body = headers.header_json(ds, study_uid=header.study_uid, series_uid=header.series_uid,
                                          sop_uid=header.sop_instance_uid,
                                          has_pixel_data=staged.extra.get("has_pixel_data", False))

    # --- commit --------------------------------------------------------------------
    def commit(self, staged: StagedInstance, *, principal: Principal,
               expected_study: str | None = None) -> InstanceOutcome:
        """Store a staged instance; always consumes the staged file."""
        return self.commit_many([staged], principal=principal, expected_study=expected_study)[0]

    def pipeline(self) -> StagingPipeline:
        """Stage many instances with their inspection overlapping their arrival."""
        return StagingPipeline(self)

    def ingest(self, source: Iterable[bytes] | BinaryIO, *, principal: Principal,
               expected_study: str | None = None) -> InstanceOutcome:
        """Stage and commit one instance (C-STORE, zip members, imports)."""
        return self.commit(self.stage(source), principal=principal, expected_study=expected_study)

    def commit_many(self, staged: list[StagedInstance], *, principal: Principal,
                    expected_study: str | None = None) -> list[InstanceOutcome]:
        """Store staged instances, indexing them in one transaction; consumes every staged file.

        Blobs are written first; an instance is visible only once the transaction commits.
        """
        outcomes = [self._outcome(s) for s in staged]
        prepared: list[tuple[int, NewInstance]] = []
        try:
            self.authorize(principal)
            for i, item in enumerate(staged):
                try:
                    new = self._prepare(item, principal, expected_study, outcomes[i])
                    if new is not None:
                        prepared.append((i, new))
                except GatewayError as exc:
                    self._fail(outcomes[i], exc)
            pending = self._write_blobs(prepared, staged, outcomes)
            if pending:
                self._index(pending, outcomes, principal)
        finally:
            for item in staged:
                item.discard()
        door = door_var.get() or "other"
        for outcome in outcomes:
            metrics.count_instance(door, outcome.status,
                                   outcome.error.failure_reason if outcome.error is not None else None)
        return outcomes

    def _write_blobs(self, prepared: list[tuple[int, NewInstance]], staged: list[StagedInstance],
                     outcomes: list[InstanceOutcome]) -> list[tuple[int, NewInstance]]:
        """Write the blobs of the prepared instances together (their syncs overlap); those
        that could not be written fail alone."""
        if not prepared:
            return []
        try:
            errors = self.blobs.put_files([(new.record.blob_key, staged[i].path) for i, new in prepared])
        except StorageError as exc:
            errors = [exc] * len(prepared)
        written = []
        for (i, new), error in zip(prepared, errors):
            if error is None:
                written.append((i, new))
            else:
                self._fail(outcomes[i], _gateway_error(error))
        return written

    def authorize(self, principal: Principal) -> None:
        """403 unless the principal may store into its own clinic (what it stores lands there,
        whatever clinic holds the same UIDs)."""
        if self.access.require(principal, policy.WRITE, resource="store") != policy.CLINIC:
            raise NotAuthorized("storing needs a role that writes into its own clinic", action="write")

    @staticmethod
    def _outcome(staged: StagedInstance) -> InstanceOutcome:
        header = staged.header
        if header is None:
            return InstanceOutcome("failed")
        # Modality may be the very element that could not be read.
        modality = header.dataset.get("Modality") if staged.error is None else None
        return InstanceOutcome("failed", header.sop_class_uid, header.sop_instance_uid,
                               header.study_uid, header.series_uid, modality=str(modality) if modality else None)

    @staticmethod
    def _fail(outcome: InstanceOutcome, exc: GatewayError) -> None:
        outcome.status, outcome.error = "failed", exc
        logger.info("instance %s not stored: %s", outcome.sop_instance_uid, exc.message)

    def _prepare(self, staged: StagedInstance, principal: Principal, expected_study: str | None,
                 outcome: InstanceOutcome) -> NewInstance | None:
        """Check one staged instance and build its index entry; None when it is a known duplicate."""
        if staged.error is not None:
            raise staged.error
        header = staged.header
        if expected_study is not None and header.study_uid != expected_study:
            raise StudyMismatch(
                f"StudyInstanceUID {header.study_uid} differs from the study {expected_study} of the request")
        clinic = principal.clinic_id
        existing = self._call(self.index.find_instance, clinic, header.sop_instance_uid)
        if existing is not None and (existing.sha256 == staged.sha256
                                     or existing.dataset_sha256 == staged.dataset_sha256):
            outcome.status, outcome.record = "duplicate", existing
            return None
        if existing is not None and not self.replace_duplicates:
            raise InstanceExists(
                f"SOP Instance {header.sop_instance_uid} is already stored with different content")

        record = InstanceRecord(
            clinic_id=clinic, study_uid=header.study_uid, series_uid=header.series_uid,
            sop_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
            transfer_syntax=header.transfer_syntax,
            blob_key=f"dicom/{clinic}/{header.study_uid}/{header.series_uid}/"
                     f"{header.sop_instance_uid}.{staged.sha256[:16]}.dcm",
            size=staged.size, sha256=staged.sha256, frame_index=staged.frame_index,
            dataset_sha256=staged.dataset_sha256, crc32=staged.crc32,
        )
        attributes, body = staged.attributes, staged.body
        record.number_of_frames = attributes.get("number_of_frames")
        record.instance_number = attributes.get("instance_number")
        record.rows, record.columns = attributes.get("rows"), attributes.get("columns")
        return NewInstance(record, attributes, headers.dumps(body),
                           headers.dumps(headers.level_subset(body, "study")),
                           headers.dumps(headers.level_subset(body, "series")))

    def _index(self, pending: list[tuple[int, NewInstance]], outcomes: list[InstanceOutcome],
               principal: Principal) -> None:
        try:
            results = self._call(self.index.add_instances, [new for _, new in pending],
                                 replace=self.replace_duplicates)
        except GatewayError as exc:
            for i, new in pending:
                self._discard_unreferenced(new.record)
                self._fail(outcomes[i], exc)
            return
        for (i, new), result in zip(pending, results):
            outcome, record = outcomes[i], new.record
            if isinstance(result, Exception):  # e.g. the series is stored under another study
                self._discard_unreferenced(record)
                self._fail(outcome, DatasetMismatch(str(result)))
            elif result.outcome == "duplicate":  # a concurrent store of the same bytes won the race
                outcome.status, outcome.record = "duplicate", result.existing
            elif result.outcome == "conflict":
                self.blobs.delete(record.blob_key)
                self._fail(outcome, InstanceExists(
                    f"SOP Instance {record.sop_uid} is already stored with different content"))
            else:
                if result.outcome == "replaced" and result.existing.blob_key != record.blob_key:
                    self.blobs.delete(result.existing.blob_key)
                outcome.status, outcome.record = result.outcome, record
                self.access.audit.record("store", OK, principal=principal, resource=resource_name(record.study_uid),
                                         resource_clinic=record.clinic_id)
                self._emit(outcome)

    def _discard_unreferenced(self, record: InstanceRecord) -> None:
        """Delete a blob this ingest wrote, unless the index references it.

        Keys derive from the content, so another process may have indexed the very same
        object meanwhile; when the index cannot tell, the blob stays (an invisible orphan
        costs space, a deleted referenced blob loses an image).
        """
        try:
            current = self.index.find_instance(record.clinic_id, record.sop_uid)
        except StorageError:
            logger.warning("index unreachable: blob %s left in place", record.blob_key)
            return
        if current is None or current.blob_key != record.blob_key:
            self.blobs.delete(record.blob_key)

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StorageError as exc:
            raise _gateway_error(exc) from exc

    def _emit(self, outcome: InstanceOutcome) -> None:
        try:
            self.pm.hook.instance_stored(outcome=outcome, settings=self.settings, jobs=self.jobs)
        except Exception:  # a consumer's failure must not undo a store
            logger.exception("instance_stored hook failed for %s", outcome.sop_instance_uid)


def _gateway_error(exc: Exception) -> GatewayError:
    """What a store's error means to the front doors."""
    if isinstance(exc, Conflict):
        return DatasetMismatch(str(exc))
    if isinstance(exc, Unavailable):
        return BackendUnavailable(str(exc))
    if isinstance(exc, StorageError):
        return BackendUnavailable(f"storage failed: {exc}")
    if isinstance(exc, OSError):
        return BackendUnavailable(f"storage failed: {exc.strerror or exc}")
    return BackendUnavailable(f"storage failed: {type(exc).__name__}: {exc}")
