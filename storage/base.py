"""The backend interfaces: small cores every implementation provides.

A backend class is found by name through the entry-point groups
``gateway.blob_stores`` and ``gateway.index_stores`` (see :mod:`storage.registry`)
and is built with ``Backend.from_settings(settings)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, Protocol, runtime_checkable

from storage.query import Query


@runtime_checkable
class BlobStore(Protocol):
    """Immutable objects under string keys (``a/b/c.dcm``)."""

    def put_file(self, key: str, path: Path) -> None:
        """Store the local file at ``path`` under ``key``, atomically, consuming the file.

        After it returns, the object is durable and visible as a whole; an
        interrupted call leaves no object under ``key``.
        """

    def open(self, key: str) -> BinaryIO:
        """A seekable binary reader; raises :class:`storage.errors.ObjectNotFound`."""

    def delete(self, key: str) -> None:
        """Remove the object; no error when it does not exist."""

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (for checks and migrations)."""

    def ping(self) -> None:
        """Raise :class:`storage.errors.Unavailable` when the store cannot be used."""

    def staging_dir(self) -> Path:
        """A local folder for spooling incoming objects before :meth:`put_file`."""


@dataclass
class InstanceRecord:
    clinic_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    sha256: str
    frame_index: str | None = None
    number_of_frames: int | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None


@dataclass
class NewInstance:
    record: InstanceRecord
    attributes: dict[str, Any]  # index columns, see gateway.attributes
    header_json: str  # the instance's DICOM JSON
    study_json: str  # study/patient-level attributes (kept from the first instance)
    series_json: str  # series-level attributes


@dataclass
class AddResult:
    outcome: Literal["stored", "duplicate", "conflict", "replaced"]
    existing: InstanceRecord | None = None


@dataclass
class SearchResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False


@runtime_checkable
class IndexStore(Protocol):
    def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names applied."""

    def ping(self) -> None: ...

    def find_instance(self, clinic_id: str, sop_uid: str) -> InstanceRecord | None: ...

    def add_instance(self, new: NewInstance, *, replace: bool) -> AddResult:
        """Index one instance in one transaction.

        Same SOP Instance UID with the same sha256 → ``duplicate``; with other bytes
        → ``conflict`` unless ``replace``, then ``replaced`` (``existing`` is the old
        record, whose blob the caller deletes). Raises :class:`storage.errors.Conflict`
        when the series is already indexed under another study.
        """

    def add_instances(self, items: list[NewInstance], *, replace: bool) -> list["AddResult | Exception"]:
        """:meth:`add_instance` for several instances in one transaction; an item that
        conflicts gets its :class:`storage.errors.Conflict` as result, the others are kept."""

    def search(self, query: Query) -> SearchResult:
        """Rows of the query's level: column values by name, plus ``study_json`` /
        ``series_json`` (and ``header_json`` when ``with_headers``)."""

    def instances(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[InstanceRecord]:
        """Stored instances in series, then instance-number order."""

    def instance_headers(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                         sop_uid: str | None = None) -> Iterator[str]:
        """Each instance's DICOM JSON text, in the same order as :meth:`instances`."""

    def delete(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None) -> list[InstanceRecord]:
        """Remove the rows in one transaction; return the removed instances."""

    def counts(self, clinic_id: str | None = None) -> dict[str, int]:
        """Numbers of patients, studies, series and instances (for status and tests)."""

    def close(self) -> None: ...
