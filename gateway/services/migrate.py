"""Copy a deployment from one pair of stores to another: typically the embedded one
(SQLite + a folder) to PostgreSQL + S3, without losing or changing any instance.

Every instance the source *index* knows is read from the source blob store, spooled into
the target's staging folder while its sha256 is computed (it must equal the recorded one),
and stored through the target's normal ingest path (header parsed, validated, blob
written, then indexed). It is then checked on the target: the index row carries the same
sha256, and (unless ``verify_blobs`` is off) the stored object read back hashes to it too.

Re-running is harmless and resumes an interrupted copy: instances already on the target
with the same bytes count as ``already there`` (and are verified again). Objects outside
``dicom/`` (derived objects: previews, masks, offloaded metadata annotations) are copied as
they are, also verified.

Image metadata records are copied from the source metadata store to the target's, each with
every version of its history (same version numbers, times and authors, so ETags held by
clients stay valid) and its mirrored share state, by :meth:`storage.base.MetadataStore.restore`:
a record the target has at the same version is ``already there``; one the target has at an
older version gets the versions it lacks (``updated``: a source written after the last run);
one the target has at a newer version, or with other content, is reported as failed and left
alone.
Ingest hooks are not run (no forwarding, no preview jobs): the copies are not new
instances. Blobs under ``dicom/`` that no index row points at (left by a crash) are not
copied.

The source should not receive writes during the copy; run it again after the cut-over
to pick up late arrivals.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from auth.base import Principal
from storage.base import InstanceIndex
from storage.errors import ObjectNotFound, StorageError, VersionConflict
from storage.metadata import MetadataQuery, MetadataRecord
from storage.query import Query
from storage.records import InstanceRecord

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
DICOM_PREFIX = "dicom/"


@dataclass
class MigrationReport:
    copied: int = 0  # stored on the target by this run
    already_there: int = 0  # on the target with the same bytes before this run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    bytes_copied: int = 0
    verified: int = 0  # instances whose target copy was checked against the source sha256
    derived_copied: int = 0
    derived_already_there: int = 0
    metadata: dict[str, int] = field(default_factory=lambda: {"copied": 0, "updated": 0, "already there": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (f"{self.copied} instances copied ({self.bytes_copied / 1e6:.1f} MB), {self.already_there} already "
                f"there, {len(self.failed)} failed; sha256 verified for {self.verified}; derived objects: "
                f"{self.derived_copied} copied, {self.derived_already_there} already there; metadata records: "
                f"{self.metadata['copied']} copied, {self.metadata['updated']} updated, "
                f"{self.metadata['already there']} already there")


def _sha256_of(fh) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _clinics(source) -> list[str]:
    """Every clinic of the source: from its index, and from blob keys (``dicom/{clinic}/...``)."""
    clinics = set(source.index.clinic_ids())
    for key in source.blobs.keys(DICOM_PREFIX):
        parts = key.split("/")
        if len(parts) > 2:
            clinics.add(parts[1])
    return sorted(clinics)


def _batches(items: Iterator[InstanceRecord], size: int) -> Iterator[list[InstanceRecord]]:
    batch: list[InstanceRecord] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def source_instances(index: InstanceIndex, clinic: str, page: int = 500) -> Iterator[InstanceRecord]:
    """Every indexed instance of a clinic, study by study."""
    offset = 0
    while True:
        found = index.search(Query(level="study", clinic_id=clinic, limit=page, offset=offset))
        for row in found.rows:
            yield from index.instances(clinic, row["study_uid"])
        if not found.truncated:
            return
        offset += page


class StoreMigration:
    """Copies ``source`` to ``target`` (two :class:`gateway.services.Services`, both built
    without plugins: the copies are not new instances)."""

    def __init__(self, source, target, *, verify_blobs: bool = True, jobs: int = 4):
        self.source = source
        self.target = target
        self.verify_blobs = verify_blobs
        self.jobs = max(1, jobs)
        self.report = MigrationReport()

    def run(self, *, clinics: list[str] | None = None,
            progress: Callable[[InstanceRecord], None] | None = None) -> MigrationReport:
        clinics = clinics or _clinics(self.source)
        with ThreadPoolExecutor(self.jobs) as pool:
            for clinic in clinics:
                for batch in _batches(source_instances(self.source.index, clinic), self.jobs * 16):
                    for record in pool.map(self._copy_one, batch):  # bounded: one batch in flight
                        if progress:
                            progress(record)
        self._copy_derived()
        for clinic in clinics:
            self._copy_metadata(clinic)
        return self.report

    # --- instances ---------------------------------------------------------------------
    def _fail(self, record: InstanceRecord, why: str) -> None:
        logger.error("instance %s of clinic %s not migrated: %s", record.sop_uid, record.clinic_id, why)
        with self.report._lock:
            self.report.failed.append((f"{record.clinic_id}/{record.sop_uid}", why))

    def _copy_one(self, record: InstanceRecord) -> InstanceRecord:
        try:
            try:
                source = self.source.blobs.open(record.blob_key)
            except ObjectNotFound:
                self._fail(record, f"blob {record.blob_key} is missing in the source")
                return record
            with source:
                staged = self.target.ingest.stage(source)
            if staged.sha256 != record.sha256:
                staged.discard()
                self._fail(record, f"source blob sha256 {staged.sha256} differs from the indexed {record.sha256}")
                return record
            outcome = self.target.ingest.commit(staged, principal=Principal.system(record.clinic_id, "migration"))
            if not outcome.ok:
                self._fail(record, f"target refused it: {outcome.error.message}")
                return record
            self._verify(record)
            with self.report._lock:
                if outcome.status == "duplicate":
                    self.report.already_there += 1
                else:
                    self.report.copied += 1
                    self.report.bytes_copied += record.size
        except (StorageError, OSError) as exc:
            self._fail(record, f"{type(exc).__name__}: {exc}")
        return record

    def _verify(self, record: InstanceRecord) -> None:
        copy = self.target.index.find_instance(record.clinic_id, record.sop_uid)
        if copy is None or copy.sha256 != record.sha256 or copy.size != record.size:
            raise StorageError(f"target index has {copy and copy.sha256} for sha256 {record.sha256}")
        if self.verify_blobs:
            with self.target.blobs.open(copy.blob_key) as fh:
                got = _sha256_of(fh)
            if got != record.sha256:
                raise StorageError(f"target blob {copy.blob_key} hashes to {got}, expected {record.sha256}")
        with self.report._lock:
            self.report.verified += 1

    # --- other objects -------------------------------------------------------------------
    def _copy_derived(self) -> None:
        staging = Path(self.target.blobs.staging_dir())
        staging.mkdir(parents=True, exist_ok=True)
        for key in self.source.blobs.keys():
            if key.startswith(DICOM_PREFIX):
                continue
            tmp: Path | None = None
            try:
                with self.source.blobs.open(key) as src, tempfile.NamedTemporaryFile(
                        dir=staging, suffix=".part", delete=False) as out:
                    tmp = Path(out.name)
                    shutil.copyfileobj(src, out, _CHUNK)
                with tmp.open("rb") as fh:
                    want = _sha256_of(fh)
                if self.target.blobs.exists(key):
                    with self.target.blobs.open(key) as fh:
                        if _sha256_of(fh) == want:
                            self.report.derived_already_there += 1
                            continue
                self.target.blobs.put_file(key, tmp)
                with self.target.blobs.open(key) as fh:
                    if _sha256_of(fh) != want:
                        raise StorageError(f"target copy of {key} differs from the source")
                self.report.derived_copied += 1
            except (StorageError, OSError) as exc:
                logger.error("object %s not migrated: %s", key, exc)
                self.report.failed.append((key, f"{type(exc).__name__}: {exc}"))
            finally:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)

    # --- image metadata ----------------------------------------------------------------------
    def _copy_metadata(self, clinic: str, page: int = 500) -> None:
        source = self.source.metadata_store
        offset = 0
        while True:
            try:
                found = source.search(MetadataQuery(clinic, limit=page, offset=offset))
            except StorageError as exc:
                self.report.failed.append((f"metadata of clinic {clinic}", f"{type(exc).__name__}: {exc}"))
                return
            for record in found:
                self._copy_record(record)
            if len(found) < page:
                return
            offset += page

    def _copy_record(self, record: MetadataRecord) -> None:
        what = f"metadata {record.clinic_id}/{record.key.object_key}"
        try:
            versions = _versions(self.source.metadata_store, record)
            status = self.target.metadata_store.restore(versions)
        except VersionConflict as exc:
            logger.error("%s not migrated: %s", what, exc)
            self.report.failed.append((what, f"the target's record differs and is left alone: {exc}"))
            return
        except (StorageError, OSError) as exc:
            logger.error("%s not migrated: %s", what, exc)
            self.report.failed.append((what, f"{type(exc).__name__}: {exc}"))
            return
        self.report.metadata[status] += 1


def _versions(store, record: MetadataRecord, page: int = 500) -> list[MetadataRecord]:
    """Every version of ``record`` in ``store``, oldest first, the current one (with its share
    state) last."""
    newest_first: list[MetadataRecord] = []
    before = None
    while True:
        found = store.history(record.clinic_id, record.key, limit=page, before_version=before)
        newest_first += found
        if len(found) < page:
            break
        before = found[-1].version
    versions = [v for v in reversed(newest_first) if v.version < record.version]
    return [*versions, record]
