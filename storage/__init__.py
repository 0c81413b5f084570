"""Storage backends behind small interfaces: the ground floor of the gateway.

Nothing here imports the rest of the gateway. :mod:`storage.base` holds the interfaces (blob
store, instance index, job queue, share store, audit log, upload store), :mod:`storage.records` the records
they keep, :mod:`storage.query` the one query model, :mod:`storage.attributes` the indexed
DICOM attributes, :mod:`storage.registry` finds backends by entry point.
"""
from storage.base import AuditLog, BlobStore, IndexBackend, InstanceIndex, JobQueue, ShareStore, UploadStore
from storage.errors import Conflict, ObjectNotFound, StorageError, Unavailable
from storage.query import Match, Query
from storage.records import (AddResult, AuditQuery, AuditRecord, InstanceRecord, Job, NewInstance, SearchResult,
                             ShareRecord, Upload, UploadEntry, UploadEvent)

__all__ = [
    "AddResult", "AuditLog", "AuditQuery", "AuditRecord", "BlobStore", "Conflict", "IndexBackend", "InstanceIndex",
    "InstanceRecord", "Job", "JobQueue", "Match", "NewInstance", "ObjectNotFound", "Query", "SearchResult",
    "ShareRecord", "ShareStore", "StorageError", "Unavailable", "Upload", "UploadEntry", "UploadEvent", "UploadStore",
]
