"""Storage backends behind small interfaces: blob stores and index stores."""
from storage.base import AddResult, BlobStore, IndexStore, InstanceRecord, NewInstance, SearchResult
from storage.errors import Conflict, ObjectNotFound, StorageError, Unavailable
from storage.query import Match, Query

__all__ = [
    "AddResult", "BlobStore", "Conflict", "IndexStore", "InstanceRecord", "Match", "NewInstance",
    "ObjectNotFound", "Query", "SearchResult", "StorageError", "Unavailable",
]
