"""The core services shared by every front door, and :meth:`Services.build`, the one place that
builds them.

``Services.build(settings)`` is the composition root of every process: the HTTP app
(:func:`gateway.app.create_app`), the DIMSE listener and the job worker
(:mod:`gateway.dimse.listener`), and the CLI. It picks the backends named by the settings
(entry points, :mod:`storage.registry`), applies the index schema migrations, builds the
plugin manager with every plugin (:mod:`plugins.manager`), access control, and the
services on top of them. Nothing else builds a store or a plugin manager.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from auth.access import AccessControl
from auth.audit import AuditService
from auth.shares import ShareService
from auth.signing import UrlSigner
from gateway import metrics
from gateway.config import SettingsError
from gateway.services.annotations import AnnotationService
from gateway.services.archives import ArchiveService
from gateway.services.delete import DeleteService
from gateway.services.derived import DerivedService
from gateway.services.ingest import IngestService, InstanceOutcome, StagedInstance
from gateway.services.jobs import JobService
from gateway.services.masks import MaskService
from gateway.services.metadata import MetadataService
from gateway.services.minict import MiniCtService
from gateway.services.query import QueryService, SearchOutcome
from gateway.services.retrieve import Frame, RetrieveService
from gateway.services.sidecars import import_upload_sidecars
from gateway.services.transcode import TranscodeService
from gateway.services.uploads import UploadService
from gateway.services.users import UserService
from plugins.manager import create_plugin_manager
from storage import registry
from storage.base import (
    INDEX_KINDS,
    BlobStore,
    IndexBackend,
    InstanceIndex,
    MetadataStore,
)
from storage.errors import ObjectNotFound, StorageError, VersionConflict

logger = logging.getLogger(__name__)


def _backend(kind: str, settings, **context):
    """The backend of ``storage.<kind>_backend``; what it cannot use is a settings error."""
    name = settings[f"storage.{kind}_backend"]
    try:
        return registry.create(kind, name, settings, **context)
    except registry.BackendNotFound as exc:
        raise SettingsError(f"storage.{kind}_backend: {exc}") from exc
    except SettingsError:
        raise
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def _index_backend(settings) -> IndexBackend:
    backend = _backend("index", settings)
    missing = [kind for kind in INDEX_KINDS if kind not in getattr(backend, "offers", ())]
    if missing:
        raise SettingsError(f"storage.index_backend {settings['storage.index_backend']!r} does not offer "
                            f"{', '.join(missing)}, which the gateway needs")
    return backend


@dataclass
class Services:
    settings: object
    blobs: BlobStore
    database: IndexBackend  # owns the schema of the stores below
    index: InstanceIndex
    pm: object
    jobs: JobService
    audit: AuditService
    access: AccessControl
    shares: ShareService
    signer: UrlSigner
    ingest: IngestService
    query: QueryService
    retrieve: RetrieveService
    transcode: TranscodeService
    deleter: DeleteService
    uploads: UploadService
    archives: ArchiveService
    derived: DerivedService
    minict: MiniCtService
    users: UserService
    annotations: AnnotationService
    masks: MaskService
    metadata_store: MetadataStore
    metadata: MetadataService
    migrations: list[str] = field(default_factory=list)  # applied by this build

    @classmethod
    def build(cls, settings, *, plugins: bool = True) -> "Services":
        """Every store, service and plugin of a process. ``plugins=False``: no plugin at all
        (copies between deployments must not forward nor make previews)."""
        blobs = metrics.Timed("blobs", _backend("blob", settings))
        database = _index_backend(settings)
        migrations = database.migrate()
        pm = create_plugin_manager(load_entry_points=plugins)
        try:
            signer = UrlSigner.from_settings(settings)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        index = metrics.Timed("index", database.instances)
        jobs = JobService(database.jobs)
        audit = AuditService.from_settings(database.audit, settings)
        access = AccessControl(database.shares, index, audit, operator_clinics=settings["auth.operator_clinics"])
        retrieve = RetrieveService(blobs, index, access=access)
        ingest = IngestService(blobs, index, settings, pm, access=access, jobs=jobs)
        derived = DerivedService(metrics.Timed("derived", database.derived), blobs, index, jobs, access=access,
                                 enabled=settings["previews.enabled"])
        users = UserService(database.users)
        annotations = AnnotationService(database.projects, database.annotations, index, blobs, access=access,
                                        audit=audit, users=users)
        masks = MaskService(database.masks, annotations, index, blobs, signer, access=access, audit=audit,
                            settings=settings)
        deleter = DeleteService(blobs, index, settings, pm, access=access, jobs=jobs, annotations=annotations,
                                derived=derived)
        query = QueryService(index, settings, access=access)
        archives = ArchiveService(retrieve, query, index)
        metadata_store = metrics.Timed("metadata", _backend("metadata", settings, index=database),
                                       answers=(VersionConflict, ObjectNotFound))
        metadata = MetadataService.from_settings(metadata_store, index, blobs, access, audit, database.shares,
                                                 archives.entry_names, settings)
        deleter.cascades.append(metadata.deleted)
        shares = ShareService.from_settings(database.shares, index, access, audit, settings)
        shares.changed.append(metadata.share_changed)
        uploads = UploadService(database.uploads, ingest, deleter, blobs, access, settings, pm, jobs)
        uploads.sidecar_import = functools.partial(import_upload_sidecars, metadata, blobs)
        return cls(
            settings, blobs, database, index, pm, jobs, audit, access,
            shares, signer,
            ingest,
            query, retrieve, TranscodeService(retrieve),
            deleter, uploads,
            archives,
            derived,
            MiniCtService(index, retrieve, ingest, derived, blobs, access=access),
            users, annotations, masks,
            metadata_store, metadata,
            migrations,
        )

    def ping(self) -> dict[str, str]:
        """``ok`` or why not, for each store (readiness)."""
        checks = {}
        stores = [("index", self.database), ("blobs", self.blobs)]
        if getattr(self.metadata_store, "db", None) is not self.database:  # not the index database itself
            stores.append(("metadata", self.metadata_store))
        for name, store in stores:
            try:
                store.ping()
                checks[name] = "ok"
            except (StorageError, OSError) as exc:
                checks[name] = f"unavailable: {exc}"
        return checks

    def close(self) -> None:
        for store in (self.metadata_store, self.database, self.blobs):
            close = getattr(store, "close", None)
            if close:
                close()


__all__ = ["AnnotationService", "DerivedService", "MiniCtService", "ArchiveService", "DeleteService", "Frame", "IngestService", "InstanceOutcome", "JobService", "MetadataService", "MaskService", "QueryService",
           "RetrieveService", "SearchOutcome", "Services", "StagedInstance", "TranscodeService", "UserService"]
