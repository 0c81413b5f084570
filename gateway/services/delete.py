"""Deleting studies, series and instances: index rows first, then their blobs, and with a
study or series the objects derived from it (previews, thumbnails).

What goes with the instances (their annotations and masks, their image metadata) goes by
what is gone from the clinic afterwards, so that a delete that empties a series or a study
takes what hangs on the series or the study too: the whole study when it has no instance
left, else each series with none left, else the deleted instances one by one."""
from __future__ import annotations

import logging
from typing import Iterator

from auth import policy
from auth.audit import OK, resource_name
from auth.base import Principal
from gateway.errors import BackendUnavailable
from storage.base import BlobStore, InstanceIndex
from storage.errors import StorageError
from storage.records import InstanceRecord

logger = logging.getLogger(__name__)


class DeleteService:
    """``instances_deleted`` is emitted with ``jobs`` (:class:`gateway.services.jobs.JobService`),
    where plugins queue the clean-up of what they derived from the instances. A deleted study
    or series loses its derived objects (previews, thumbnails) here, by ``derived``.

    The clinic's annotations of what is gone (and their masks, rows and objects) are deleted
    here, by ``annotations`` (:class:`gateway.services.annotations.AnnotationService`), right
    after the instances: they are core data in the same index database, not something a
    plugin derived, and a plugin hook would get neither the principal nor the stores. So are
    the image metadata records, by the ``cascades`` (called with the clinic, study, series and
    instance of each part gone, see :meth:`gone`)."""

    def __init__(self, blobs: BlobStore, index: InstanceIndex, settings, plugin_manager, *, access, jobs,
                 annotations=None, derived=None):
        self.annotations = annotations
        self.blobs = blobs
        self.derived = derived  # DerivedService
        self.index = index
        self.settings = settings
        self.pm = plugin_manager
        self.access = access
        self.jobs = jobs
        # Core services whose records go with the instances (image metadata), called as
        # cascade(clinic_id, study, series, sop) for each part gone once the blobs are; set by
        # Services.build.
        self.cascades: list = []

    def gone(self, clinic_id: str, removed: list[InstanceRecord]) -> Iterator[tuple[str, str | None, str | None]]:
        """(study, series, instance) of what the removal of ``removed`` left gone from the clinic:
        (study, None, None) for a study without instances, (study, series, None) for a series
        without instances, else (study, series, instance) for each removed instance."""
        for study in sorted({r.study_uid for r in removed}):
            if not self.index.instances(clinic_id, study):
                yield study, None, None
                continue
            mine = [r for r in removed if r.study_uid == study]
            for series in sorted({r.series_uid for r in mine}):
                if not self.index.instances(clinic_id, study, series):
                    yield study, series, None
                else:
                    yield from ((study, series, sop) for sop in sorted({r.sop_uid for r in mine
                                                                         if r.series_uid == series}))

    def delete(self, principal: Principal, study: str, series: str | None = None,
               sop: str | None = None) -> list[InstanceRecord]:
        # Only the principal's own clinic: a study of another clinic (shared or not) is a 404.
        resource = resource_name(study, series, sop)
        scope = self.access.require(principal, policy.DELETE, resource=resource)
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        # Rows go first so nothing visible points at a missing blob; a crash between
        # the two steps leaves only unreferenced blobs.
        removed = []
        if scope == policy.CLINIC:
            try:
                removed = self.index.delete(principal.clinic_id, study, series, sop)
            except StorageError as exc:
                raise BackendUnavailable(f"index delete failed: {exc}") from exc
        if not removed:
            raise self.access.not_found(principal, "delete", what, study, series, sop)
        self.access.audit.record("delete", OK, principal=principal, resource=resource,
                                 resource_clinic=principal.clinic_id, detail=f"{len(removed)} instance(s)")
        for record in removed:
            try:
                self.blobs.delete(record.blob_key)
            except StorageError:
                logger.exception("blob %s left behind after delete", record.blob_key)
        if sop is None and self.derived is not None:
            try:
                self.derived.forget(principal.clinic_id, study, series)
            except Exception:  # the previews job of the series forgets them too
                logger.exception("derived objects of %s left behind after delete", resource)
        try:
            gone = list(self.gone(principal.clinic_id, removed))
        except StorageError:
            logger.exception("what the delete of %s left gone is unknown: only what it named is cleaned up",
                             resource)
            gone = [(study, series, sop)]
        for part in gone:
            if self.annotations is not None:
                self.annotations.study_deleted(principal, *part)
            for cascade in self.cascades:
                try:
                    cascade(principal.clinic_id, *part)
                except Exception:
                    logger.exception("clean-up after the delete of %s failed", resource_name(*part))
        try:
            self.pm.hook.instances_deleted(records=removed, settings=self.settings, jobs=self.jobs)
        except Exception:
            logger.exception("instances_deleted hook failed")
        return removed
