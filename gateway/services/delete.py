"""Deleting studies, series and instances: index rows first, then their blobs."""
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
    where plugins queue the clean-up of what they derived from the instances."""

    def __init__(self, blobs: BlobStore, index: InstanceIndex, settings, plugin_manager, *, access, jobs):
        self.blobs = blobs
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
