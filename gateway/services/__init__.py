"""The core services shared by every front door, bundled per app."""
from __future__ import annotations

from dataclasses import dataclass

from auth.access import AccessControl
from auth.audit import AuditService
from auth.shares import ShareService
from gateway.services.delete import DeleteService
from gateway.services.ingest import IngestService, InstanceOutcome, StagedInstance
from gateway.services.query import QueryService, SearchOutcome
from gateway.services.retrieve import Frame, RetrieveService
from storage import registry


@dataclass
class Services:
    settings: object
    blobs: object
    index: object
    pm: object
    ingest: IngestService
    query: QueryService
    retrieve: RetrieveService
    deleter: DeleteService
    audit: AuditService
    access: AccessControl
    shares: ShareService

    @classmethod
    def build(cls, settings, plugin_manager) -> "Services":
        blobs = registry.create("blob", settings["storage.blob_backend"], settings)
        index = registry.create("index", settings["storage.index_backend"], settings)
        index.migrate()
        audit = AuditService.from_settings(index, settings)
        access = AccessControl(index, audit)
        services = cls(settings, blobs, index, plugin_manager,
                       IngestService(blobs, index, settings, plugin_manager, access=access),
                       QueryService(index, settings, access=access), RetrieveService(blobs, index, access=access),
                       DeleteService(blobs, index, plugin_manager, access=access),
                       audit, access, ShareService.from_settings(index, access, audit, settings))
        services.ingest.services = services
        services.deleter.services = services
        return services

    def close(self) -> None:
        for store in (self.index, self.blobs):
            close = getattr(store, "close", None)
            if close:
                close()


__all__ = ["DeleteService", "Frame", "IngestService", "InstanceOutcome", "QueryService",
           "RetrieveService", "SearchOutcome", "Services", "StagedInstance"]
