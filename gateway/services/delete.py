"""Deleting studies, series and instances: index rows first, then their blobs, and with a
study or series the objects derived from it (previews, thumbnails)."""
from __future__ import annotations

import logging

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

    The clinic's annotations of what was deleted (and their masks, rows and objects) are
    deleted here, by ``annotations`` (:class:`gateway.services.annotations.AnnotationService`),
    right after the instances: they are core data in the same index database, not something
    a plugin derived, and a plugin hook would get neither the principal nor the stores."""

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
        # Core services whose records go with the instances (image metadata), called with the
        # removed instances once their blobs are gone; set by Services.build.
        self.cascades: list = []

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
        if self.annotations is not None:
            self.annotations.study_deleted(principal, study, series, sop)
        for cascade in self.cascades:
            try:
                cascade(removed)
            except Exception:
                logger.exception("clean-up after the delete of %s failed", resource)
        try:
            self.pm.hook.instances_deleted(records=removed, settings=self.settings, jobs=self.jobs)
        except Exception:
            logger.exception("instances_deleted hook failed")
        return removed
