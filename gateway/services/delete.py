"""Deleting studies, series and instances: index rows first, then their blobs."""
from __future__ import annotations

import logging

from auth.base import Principal
from gateway.errors import BackendUnavailable, NotFound
from storage.base import BlobStore, IndexStore, InstanceRecord
from storage.errors import StorageError

logger = logging.getLogger(__name__)


class DeleteService:
    def __init__(self, blobs: BlobStore, index: IndexStore, plugin_manager, services=None):
        self.blobs = blobs
        self.index = index
        self.pm = plugin_manager
        self.services = services

    def delete(self, principal: Principal, study: str, series: str | None = None,
               sop: str | None = None) -> list[InstanceRecord]:
        # Rows go first so nothing visible points at a missing blob; a crash between
        # the two steps leaves only unreferenced blobs.
        try:
            removed = self.index.delete(principal.clinic_id, study, series, sop)
        except StorageError as exc:
            raise BackendUnavailable(f"index delete failed: {exc}") from exc
        if not removed:
            what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
            raise NotFound(f"{what} not found")
        for record in removed:
            try:
                self.blobs.delete(record.blob_key)
            except StorageError:
                logger.exception("blob %s left behind after delete", record.blob_key)
        try:
            self.pm.hook.instances_deleted(records=removed, services=self.services)
        except Exception:
            logger.exception("instances_deleted hook failed")
        return removed
