"""Objects derived from series — previews, thumbnails, 3D snapshots — as the front doors read
them, and the job that makes them.

The objects are made by the job kind ``previews`` (one job per series, key
``{study}/{series}``: :mod:`plugins.previews.pipeline` queues it and runs the generator
plugins). Each object is a blob under a key carrying its version, recorded in the index's
:class:`storage.base.DerivedStore`. A version is a digest of the series' instances (SOP
Instance UIDs and their content) and the generators' parameters: a new or replaced instance
makes a new version, and URLs naming an older one stop working.

Reads take the source's access rules (:meth:`auth.access.AccessControl.find`, ``view``): a
series the principal may not see is a 404, whether or not it has derived objects.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import BinaryIO

from auth.access import VIEW
from auth.base import Principal
from gateway.errors import BackendUnavailable, NotFound
from gateway.services.jobs import JobService, job_summary, now_ms
from storage.base import BlobStore, DerivedStore, InstanceIndex
from storage.errors import ObjectNotFound, StorageError
from storage.records import DerivedObject, InstanceRecord, Job

logger = logging.getLogger(__name__)

KIND = "previews"
# Derived objects the previews job does not make (Mini CTs of a series, gateway/services/minict.py).
MINI_CT_PREFIX = "mini-ct/"


def made_by_pipeline(name: str) -> bool:
    return not name.startswith(MINI_CT_PREFIX)


def job_key(study: str, series: str) -> str:
    return f"{study}/{series}"


def derive_job(clinic: str, study: str, series: str, *, due_ms: int = 0, reason: str = "") -> Job:
    return Job(KIND, job_key(study, series), clinic, {"study_uid": study, "series_uid": series, "reason": reason},
               next_attempt_at=due_ms)


def content_version(records: list[InstanceRecord], params: dict) -> str:
    """The version of what a series' instances and these parameters make."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    for record in sorted(records, key=lambda r: r.sop_uid):
        digest.update(f"\n{record.sop_uid} {record.dataset_sha256 or record.sha256}".encode())
    return digest.hexdigest()[:20]


def blob_key(obj_clinic: str, study: str, series: str, version: str, name: str) -> str:
    return f"derived/{obj_clinic}/{study}/{series}/{version}/{name}"


@dataclass
class SeriesDerived:
    """A series the principal may see, and what has been derived from it so far."""

    clinic_id: str
    study_uid: str
    series_uid: str
    objects: dict[str, DerivedObject]
    job: Job | None

    def state(self) -> str:
        if self.job is not None and self.job.status == "failed":
            return "failed"
        if self.job is not None:
            return "running" if self.job.lease_owner and (self.job.lease_until or 0) > now_ms() else "pending"
        return "ready" if self.objects else "none"

    def status(self) -> dict:
        preview = self.objects.get("preview")
        body = {"study_uid": self.study_uid, "series_uid": self.series_uid, "state": self.state(),
                "version": preview.version if preview else None,
                "objects": sorted(self.objects),
                "updating": self.job is not None and bool(self.objects)}
        if self.job is not None:
            body["job"] = {k: v for k, v in job_summary(self.job).items()
                           if k in ("id", "status", "attempts", "next_attempt_at", "last_error", "updated_at")}
            body["progress"] = self.job.progress or {}
        if preview is not None:
            body["skipped"] = preview.info.get("skipped", [])
        return body


class DerivedService:
    """Find, open and forget derived objects; ask for them to be made."""

    def __init__(self, store: DerivedStore, blobs: BlobStore, index: InstanceIndex, jobs: JobService, *, access,
                 enabled: bool = True):
        self.enabled = enabled  # previews.enabled: jobs are queued (and run) at all
        self.store = store
        self.blobs = blobs
        self.index = index
        self.jobs = jobs
        self.access = access

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StorageError as exc:
            raise BackendUnavailable(f"derived objects unreachable: {exc}") from exc

    def series(self, principal: Principal, study: str, series: str) -> SeriesDerived:
        """The series (own clinic first, then shares), with its objects and pending job; a
        series with no instance the principal may see is a 404."""
        def lookup(source) -> SeriesDerived | None:
            if not source.allows_series(series):
                return None
            objects = {o.name: o for o in self._call(self.store.for_series, source.clinic_id, series)
                       if o.study_uid == study and made_by_pipeline(o.name)}
            if not objects and not self._call(self.index.instances, source.clinic_id, study, series):
                return None
            found = self.jobs.list_jobs(kind=KIND, clinic_id=source.clinic_id, key=job_key(study, series), limit=1)
            return SeriesDerived(source.clinic_id, study, series, objects, found[0] if found else None)

        return self.access.find(principal, study, series, None, VIEW, lookup, what=f"series {series}")

    def request(self, found: SeriesDerived, reason: str) -> None:
        """Queue the series' job now (nothing happens when it is queued already)."""
        if found.job is None and self.enabled:
            self.jobs.enqueue([derive_job(found.clinic_id, found.study_uid, found.series_uid, reason=reason)])
            found.job = self.jobs.list_jobs(kind=KIND, clinic_id=found.clinic_id,
                                            key=job_key(found.study_uid, found.series_uid), limit=1)[0]

    def require(self, principal: Principal, study: str, series: str, name: str, *,
                version: str | None = None) -> tuple[SeriesDerived, DerivedObject]:
        """The derived object ``name`` of a series; 404 naming the job's progress while it is
        not made yet (asking for it queues its job), 404 for a version that is not the latest."""
        found = self.series(principal, study, series)
        obj = found.objects.get(name)
        if obj is None:
            self.request(found, f"{name} asked for")
            status = found.status()
            why = status["state"] if self.enabled else "previews.enabled is off"
            raise NotFound(f"{name} of series {series} is not generated yet ({why})", derived=status)
        if version is not None and version != obj.version:
            raise NotFound(f"version {version} of {name} of series {series} is not the latest ({obj.version}): "
                           "ask for a new URL", derived=found.status())
        return found, obj

    def open(self, obj: DerivedObject) -> BinaryIO:
        try:
            return self.blobs.open(obj.blob_key)
        except ObjectNotFound:
            logger.error("blob %s of derived object %s of series %s is missing", obj.blob_key, obj.name,
                         obj.series_uid)
            raise BackendUnavailable(f"stored {obj.name} of series {obj.series_uid} is missing") from None
        except StorageError as exc:
            raise BackendUnavailable(f"blob read failed: {exc}") from exc

    def forget(self, clinic: str, study: str, series: str | None = None) -> list[DerivedObject]:
        """Remove the derived objects of a study (or series): records first, then blobs."""
        removed = self._call(self.store.delete, clinic, study, series)
        for obj in removed:
            try:
                self.blobs.delete(obj.blob_key)
            except StorageError as exc:  # an orphan blob costs space, never a wrong answer
                logger.warning("could not delete %s: %s", obj.blob_key, exc)
        return removed
