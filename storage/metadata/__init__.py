"""Image metadata: one versioned record per image object (an instance of a study in one of its
variants), what the metadata stores (:class:`storage.base.MetadataStore`) keep.

- :class:`MetadataKey`: study, series, instance and variant; its text form, the *object key*
  of the API, is ``{study}/{series}/{instance}/{variant}`` (UIDs are digits and dots, so the
  key is URL-safe as it is).
- :class:`MetadataRecord`: clinic, owner, type (``CT``/``2D``), viewer state, annotations
  (inline, or a reference to a blob when large), tags, the patient and study date it was
  indexed under (for searches), ``version`` (1, 2, ...: the ETag) and times; and the share
  state mirrored from the share store (``share``, ``share_stamp``), which is no part of the
  versioned document: writes of the record never change it, and its mirror writes
  (:meth:`storage.base.MetadataStore.set_share`) change nothing else, nor the version.
- :func:`merge_viewer_state`: the partial update of a viewer state (RFC 7386 merge patch), the
  same in every backend.

The backends live beside: :mod:`storage.index.metadata` (SQL, in the index database) and
:mod:`storage.metadata.dynamodb`.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Any

from storage.errors import VersionConflict

VARIANTS = ("original", "preview", "mini-ct")
OBJECT_TYPES = ("CT", "2D")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

DEFAULT_VIEWER_STATE: dict[str, Any] = {
    "rotation": 0, "zoom": 1.0, "window": {"center": None, "width": None},
    "pan": {"x": 0, "y": 0}, "flip": {"horizontal": False, "vertical": False},
}


def valid_uid(value: str) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.match(value))


@dataclass(frozen=True, order=True)
class MetadataKey:
    study_uid: str
    series_uid: str
    sop_uid: str
    variant: str = "original"

    @property
    def object_key(self) -> str:
        return f"{self.study_uid}/{self.series_uid}/{self.sop_uid}/{self.variant}"

    @classmethod
    def parse(cls, text: str) -> "MetadataKey":
        """``study/series/instance/variant``; :class:`ValueError` naming the part that is wrong."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) != 4:
            raise ValueError(f"object key {text!r} is not study/series/instance/variant")
        return cls.of(*parts)

    @classmethod
    def of(cls, study: str, series: str, sop: str, variant: str) -> "MetadataKey":
        for name, value in (("study", study), ("series", series), ("instance", sop)):
            if not valid_uid(value):
                raise ValueError(f"{name} UID {value!r} is not a DICOM UID (digits and dots, at most 64)")
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
        return cls(study, series, sop, variant)


@dataclass
class MetadataRecord:
    clinic_id: str
    key: MetadataKey
    owner: str
    object_type: str = "2D"
    viewer_state: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_VIEWER_STATE))
    annotations: list[Any] = field(default_factory=list)  # empty when offloaded
    annotations_ref: dict[str, Any] | None = None  # {"key", "sha256", "size", "count"} of a blob
    tags: list[str] = field(default_factory=list)
    patient_id: str | None = None
    study_date: str | None = None  # YYYYMMDD
    version: int = 0  # set by the store: 1 for a new record, +1 per write
    created_at: int = 0
    updated_at: int = 0
    updated_by: str = ""
    source: dict[str, Any] | None = None  # where it came from, e.g. {"prj": {"key", "sha256", "name"}}
    # Mirrored from the share store, not versioned: {"targets": [{"share", "type", "id", "clinic",
    # "permissions", "expiresAt" (ms)}]}, None while never shared; share_stamp orders mirror writes.
    share: dict[str, Any] | None = None
    share_stamp: int = 0

    @property
    def shared_until(self) -> int | None:
        """The latest expiry of the mirrored shares (ms), None when there is none."""
        return shared_until(self.share)

    def body(self) -> dict[str, Any]:
        """What a backend keeps besides the key, clinic and version (JSON-able)."""
        return {"owner": self.owner, "object_type": self.object_type, "viewer_state": self.viewer_state,
                "annotations": self.annotations, "annotations_ref": self.annotations_ref, "tags": self.tags,
                "patient_id": self.patient_id, "study_date": self.study_date, "created_at": self.created_at,
                "updated_at": self.updated_at, "updated_by": self.updated_by, "source": self.source}

    @classmethod
    def from_body(cls, clinic_id: str, key: MetadataKey, version: int, body: dict[str, Any], *,
                  share: dict[str, Any] | None = None, share_stamp: int = 0) -> "MetadataRecord":
        return cls(clinic_id=clinic_id, key=key, version=version, share=share, share_stamp=share_stamp or 0, **body)

    def next_version(self, version: int) -> "MetadataRecord":
        return replace(self, version=version)


def shared_until(share: dict[str, Any] | None) -> int | None:
    expiries = [t["expiresAt"] for t in (share or {}).get("targets") or () if t.get("expiresAt")]
    return max(expiries) if expiries else None


@dataclass
class MetadataQuery:
    """Filters of :meth:`storage.base.MetadataStore.search`, all of one clinic. ``shared``:
    only records whose mirrored share state has a share unexpired at ``now_ms`` (True), or
    only those without (False). Order: study date newest first (records without one last),
    then object key descending."""

    clinic_id: str
    study_uid: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None
    date_from: str | None = None  # YYYYMMDD, inclusive
    date_to: str | None = None
    tag: str | None = None
    shared: bool | None = None
    now_ms: int = 0  # what "unexpired" is measured against
    limit: int = 100
    offset: int = 0

    def matches(self, record: MetadataRecord) -> bool:
        """The filters in Python (what a backend could not express in its own query)."""
        key, date = record.key, record.study_date or ""
        return ((self.study_uid is None or key.study_uid == self.study_uid)
                and (self.series_uid is None or key.series_uid == self.series_uid)
                and (self.patient_id is None or record.patient_id == self.patient_id)
                and (self.date_from is None or (date and date >= self.date_from))
                and (self.date_to is None or (date and date <= self.date_to))
                and (self.tag is None or self.tag in record.tags)
                and (self.shared is None or self.shared == ((record.shared_until or 0) > self.now_ms)))


def restore_status(current: MetadataRecord | None, last: MetadataRecord) -> str:
    """What :meth:`storage.base.MetadataStore.restore` does with ``last`` over ``current`` (raises when it may not)."""
    if current is None:
        return "copied"
    if current.version < last.version:
        return "updated"
    if current.version == last.version and current.body() == last.body():
        return "already there"
    raise VersionConflict(f"{last.key.object_key} of clinic {last.clinic_id}: the target has version "
                          f"{current.version}" + (" with other content" if current.version == last.version else "")
                          + f", the source {last.version}", current)


def sort_key(record: MetadataRecord) -> str:
    """The order of searches as one string (descending): date, then the key's parts."""
    k = record.key
    return f"{record.study_date or ''}#{k.study_uid}#{k.series_uid}#{k.sop_uid}#{k.variant}"


def merge_viewer_state(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386: objects merge key by key, ``null`` resets a key to its default, anything else
    replaces."""
    def merge(target: Any, patch: Any, default: Any) -> Any:
        if not isinstance(patch, dict):
            return copy.deepcopy(patch)
        out = copy.deepcopy(target) if isinstance(target, dict) else {}
        for name, value in patch.items():
            fallback = default.get(name) if isinstance(default, dict) else None
            if value is None:
                out[name] = copy.deepcopy(fallback)
            else:
                out[name] = merge(out.get(name), value, fallback)
        return out

    return merge(current, changes, DEFAULT_VIEWER_STATE)


__all__ = ["DEFAULT_VIEWER_STATE", "MetadataKey", "MetadataQuery", "MetadataRecord", "OBJECT_TYPES", "VARIANTS",
           "merge_viewer_state", "restore_status", "shared_until", "sort_key", "valid_uid"]
