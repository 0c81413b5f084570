"""Image metadata: one versioned record per image object (study, series, instance, variant) of
a clinic, with optimistic locking, history, audit and sidecars.

- **Who**: reads need ``read`` and find the image where the principal may read it (own
  clinic, then the clinics sharing the study: :meth:`AccessControl.find`, audited); writes
  need ``write`` and the image in the principal's own clinic. An image the principal cannot
  see is a 404, exactly like one that does not exist (audited, naming the owner for the
  security officer only).
- **Locking**: every write names the version it was made against (``If-Match: "<n>"``; a
  create ``If-None-Match: *``); the store writes conditionally and atomically, so a stale
  write is :class:`PreconditionFailed` (412) carrying the current record, and no update is
  ever lost. A write without a precondition is :class:`PreconditionRequired` (428).
- **Annotations** larger than ``metadata.inline_annotations_max`` bytes of JSON go to the blob
  store under ``metadata/{clinic}/{study}/{series}/{instance}/{variant}/annotations-{sha16}.json``
  (immutable, content-addressed; history versions keep theirs); the record keeps
  ``annotations_ref`` and reads load them back.
- **Share state** (``share {targets, expiresAt}``) is mirrored into the records from the share
  store (:meth:`MetadataService.mirror_shares`): when a share is created or revoked
  (:class:`auth.shares.ShareService` calls :meth:`share_changed`), every record of its study
  (series) gets the active shares of its series; a record created later gets them at once.
  The shared-state search is the store's (an index of the shared records). The mirror is no
  part of the versioned document: a mirror write does **not** bump ``version`` (which would
  make every open editor's next write a 412 for a change they did not make) and adds no
  history; the store keeps it apart from the record's own fields, so a client's write (made
  from any version) never overwrites it and a mirror write never undoes a client's write.
  Mirror writes are ordered by a stamp (the time before the share store was read): a later
  one wins, so two racing mirrors end with the newer share state. Expiry needs no write:
  reads and searches drop the targets expired at that moment. The share store stays the
  authority for access; ``gateway sync-share-state`` mirrors everything again (after an
  upgrade, or a mirror write that failed: they are logged).
- **Every change** is audited (action ``metadata``, never folded into a read window).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from auth import policy
from auth.access import VIEW, AccessControl, Source
from auth.audit import OK, AuditService, resource_name
from auth.base import Principal
from gateway.errors import (
    BackendUnavailable,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
)
from gateway.services.prj import PrjError, parse_prj
from gateway.times import iso
from storage.errors import ObjectNotFound, StorageError, TooLarge, VersionConflict
from storage.metadata import (
    DEFAULT_VIEWER_STATE,
    MetadataKey,
    MetadataQuery,
    MetadataRecord,
    merge_viewer_state,
)
from storage.records import InstanceRecord

logger = logging.getLogger(__name__)

AUDIT_ACTION = "metadata"
_ETAG = re.compile(r'^\s*"(\d{1,18})"\s*$')
# DICOM JSON tags of the instance header.
PATIENT_ID, STUDY_DATE, MODALITY, NUMBER_OF_FRAMES = "00100020", "00080020", "00080060", "00280008"
CT_MODALITIES = frozenset({"CT"})


def now_ms() -> int:
    return int(time.time() * 1000)


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(if_match: str | None, if_none_match: str | None, *, create_allowed: bool) -> int | None:
    """The version a write is made against, from its precondition headers: None to create
    (``If-None-Match: *``, when ``create_allowed``). 428 without one, 400 for a malformed one."""
    if if_none_match is not None and if_none_match.strip() == "*" and if_match is None:
        if not create_allowed:
            raise BadRequest("If-None-Match: * creates a record; this request updates one: send If-Match")
        return None
    if if_match is None:
        raise PreconditionRequired('this write needs If-Match: "<version>" (the ETag of the record it was made '
                                   "from), or If-None-Match: * to create the record",
                                   header="If-Match")
    found = _ETAG.match(if_match)
    if not found:
        raise BadRequest(f'If-Match {if_match!r} is not one strong ETag such as "3" (the record\'s version; '
                         "* is not accepted: it would overwrite unseen changes)", header="If-Match")
    return int(found.group(1))


def _value(header: dict, tag: str):
    values = (header.get(tag) or {}).get("Value") or []
    return values[0] if values else None


@dataclass
class Image:
    """The indexed instance a metadata record is about."""

    clinic_id: str
    record: InstanceRecord
    patient_id: str | None
    study_date: str | None
    object_type: str
    via_shares: tuple[str, ...] = ()  # read through these shares (another clinic's image)


class MetadataService:
    """Image metadata over a :class:`storage.base.MetadataStore` (``store``); ``index`` says
    which images exist, ``blobs`` keeps large annotation bodies and legacy ``.prj`` files,
    ``shares`` (the share store) gives the share state, ``names`` (the archive service) the
    image's name in the zip layout (sidecars)."""

    def __init__(self, store, index, blobs, access: AccessControl, audit: AuditService, shares, names, *,
                 inline_max: int, annotations_max: int):
        self.store = store
        self.index = index
        self.blobs = blobs
        self.access = access
        self.audit = audit
        self.shares = shares
        self.names = names
        self.inline_max = inline_max
        self.annotations_max = annotations_max

    @classmethod
    def from_settings(cls, store, index, blobs, access, audit, shares, names, settings) -> "MetadataService":
        return cls(store, index, blobs, access, audit, shares, names,
                   inline_max=settings["metadata.inline_annotations_max"],
                   annotations_max=settings["metadata.max_annotations_bytes"])

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ObjectNotFound, VersionConflict, TooLarge):
            raise
        except StorageError as exc:
            raise BackendUnavailable(f"metadata store failed: {exc}") from exc

    # --- the image ------------------------------------------------------------------------
    def _image(self, clinic_id: str, key: MetadataKey, *, header: bool = True) -> Image | None:
        """The instance of ``key`` in the clinic; with ``header``, its patient, study date and type
        (what a write records) from its DICOM JSON."""
        try:
            records = self.index.instances(clinic_id, key.study_uid, key.series_uid, key.sop_uid)
            if records and not header:
                return Image(clinic_id, records[0], None, None, "2D")
            text = next(iter(self.index.instance_headers(clinic_id, key.study_uid, key.series_uid, key.sop_uid)),
                        None) if records else None
        except StorageError as exc:
            raise BackendUnavailable(f"index read failed: {exc}") from exc
        if not records:
            return None
        values = json.loads(text) if text else {}
        modality = str(_value(values, MODALITY) or "").upper()
        frames = records[0].number_of_frames or 1
        date = str(_value(values, STUDY_DATE) or "") or None
        patient = _value(values, PATIENT_ID)
        return Image(clinic_id, records[0], str(patient) if patient not in (None, "") else None,
                     date if date and len(date) == 8 and date.isdigit() else None,
                     "CT" if modality in CT_MODALITIES or frames > 1 else "2D")

    def _readable(self, principal: Principal, key: MetadataKey) -> Image:
        """The image where the principal may read it (audited), else 404."""
        def lookup(source: Source) -> Image | None:
            if not source.allows_series(key.series_uid):
                return None
            image = self._image(source.clinic_id, key, header=False)
            if image is not None:
                image.via_shares = tuple(source.shares)
            return image

        return self.access.find(principal, key.study_uid, key.series_uid, key.sop_uid, VIEW, lookup,
                                what=f"image {key.object_key}")

    def _writable(self, principal: Principal, key: MetadataKey) -> Image:
        """The image in the principal's own clinic, for a write; 403 without ``write``, 404
        (audited) when the clinic does not hold it."""
        resource = self._resource(key)
        scope = self.access.require(principal, policy.WRITE, resource=resource)
        image = self._image(principal.clinic_id, key) if scope == policy.CLINIC else None
        if image is None:
            raise self.access.not_found(principal, AUDIT_ACTION, f"image {key.object_key}", key.study_uid,
                                        key.series_uid, key.sop_uid)
        return image

    @staticmethod
    def _resource(key: MetadataKey) -> str:
        return resource_name(key.study_uid, key.series_uid, key.sop_uid) + f"/metadata:{key.variant}"

    # --- reads ----------------------------------------------------------------------------
    def get(self, principal: Principal, key: MetadataKey) -> dict[str, Any]:
        """The record as the API shows it (annotations loaded, share state of now)."""
        image = self._readable(principal, key)
        record = self._call(self.store.get, image.clinic_id, key)
        if record is None:
            raise NotFound(f"image {key.object_key} has no metadata yet (create it with PUT and If-None-Match: *)")
        return self.document(record, with_annotations=True, with_share=True, shares=self._visible_shares(image))

    @staticmethod
    def _visible_shares(image: Image) -> frozenset[str] | None:
        """The ids of the shares whose state a reader sees: all (None) for the owning clinic;
        only those it reads through for a share's target (who else a study is shared with is
        the owner's)."""
        return frozenset(image.via_shares) if image.via_shares else None

    def history(self, principal: Principal, key: MetadataKey, *, limit: int = 100,
                before: int | None = None) -> list[dict[str, Any]]:
        image = self._readable(principal, key)
        versions = self._call(self.store.history, image.clinic_id, key, limit=limit, before_version=before)
        if not versions and before is None:
            raise NotFound(f"image {key.object_key} has no metadata yet")
        return [self.document(v, with_annotations=False, with_share=False) for v in versions]

    def search(self, principal: Principal, *, study: str | None = None, series: str | None = None,
               patient: str | None = None, date_from: str | None = None, date_to: str | None = None,
               tag: str | None = None, shared: bool | None = None, limit: int = 100,
               offset: int = 0) -> list[dict[str, Any]]:
        """The principal's clinic's records (another clinic's never match)."""
        scope = self.access.require(principal, policy.READ, resource="metadata")
        if scope != policy.CLINIC:
            return []  # a link or a patient reads single images, it does not list a clinic's
        if series is not None and study is None:
            raise BadRequest("series needs study (a series is searched within its study)")
        now = now_ms()
        query = MetadataQuery(principal.clinic_id, study_uid=study, series_uid=series, patient_id=patient,
                              date_from=date_from, date_to=date_to, tag=tag, shared=shared, now_ms=now,
                              limit=limit, offset=offset)
        found = self._call(self.store.search, query)
        self.audit.record("search", OK, principal=principal, resource="metadata", resource_clinic=principal.clinic_id,
                          detail=f"{len(found)} record(s)")
        return [self.document(r, with_annotations=False, with_share=True, now=now) for r in found]

    # --- writes ---------------------------------------------------------------------------
    def put(self, principal: Principal, key: MetadataKey, body: dict[str, Any], *, if_match: str | None,
            if_none_match: str | None) -> dict[str, Any]:
        """Create (``If-None-Match: *``) or replace the record: ``viewerState``, ``annotations``,
        ``tags``, ``type``; what the body leaves out keeps its value (an update) or its default."""
        expected = expected_version(if_match, if_none_match, create_allowed=True)
        image = self._writable(principal, key)
        now = now_ms()
        if expected is None:
            record = MetadataRecord(clinic_id=image.clinic_id, key=key, owner=principal.user_id,
                                    object_type=image.object_type, created_at=now)
        else:
            record = self._current(image.clinic_id, key, expected)
        if "viewerState" in body:
            record.viewer_state = merge_viewer_state(DEFAULT_VIEWER_STATE, body["viewerState"])
        if "tags" in body:
            record.tags = list(dict.fromkeys(body["tags"]))
        if "type" in body:
            record.object_type = body["type"]
        if "annotations" in body:
            self._set_annotations(record, body["annotations"])
        return self._store(principal, image, record, expected, now, what="put")

    def put_annotations(self, principal: Principal, key: MetadataKey, annotations: list, *,
                        if_match: str | None) -> dict[str, Any]:
        expected = expected_version(if_match, None, create_allowed=False)
        image = self._writable(principal, key)
        record = self._current(image.clinic_id, key, expected)
        self._set_annotations(record, annotations)
        return self._store(principal, image, record, expected, now_ms(), what="annotations")

    def patch_viewer_state(self, principal: Principal, key: MetadataKey, changes: dict[str, Any], *,
                           if_match: str | None) -> dict[str, Any]:
        expected = expected_version(if_match, None, create_allowed=False)
        image = self._writable(principal, key)
        try:
            stored = self._call(self.store.patch_viewer_state, image.clinic_id, key, changes,
                                expected_version=expected, updated_by=principal.user_id, now_ms=now_ms())
        except ObjectNotFound:
            raise NotFound(f"image {key.object_key} has no metadata yet (create it with PUT and If-None-Match: *)") \
                from None
        except VersionConflict as exc:
            raise self._stale(key, expected, exc.current) from None
        self._audit_change(principal, key, stored, "viewer-state")
        return self.document(stored, with_annotations=True, with_share=True)

    def _current(self, clinic_id: str, key: MetadataKey, expected: int) -> MetadataRecord:
        """The stored record an update starts from (its owner, creation time, fields the body
        leaves out). The write that follows is still conditional on ``expected``."""
        record = self._call(self.store.get, clinic_id, key)
        if record is None:
            raise NotFound(f"image {key.object_key} has no metadata yet (create it with PUT and If-None-Match: *)")
        if record.version != expected:
            raise self._stale(key, expected, record)
        return record

    def _store(self, principal: Principal, image: Image, record: MetadataRecord, expected: int | None, now: int, *,
               what: str) -> dict[str, Any]:
        record.patient_id, record.study_date = image.patient_id, image.study_date
        record.updated_at, record.updated_by = now, principal.user_id
        try:
            stored = self._call(self.store.put, record, expected_version=expected)
        except VersionConflict as exc:
            raise self._stale(record.key, expected, exc.current) from None
        except TooLarge as exc:
            raise PayloadTooLarge(f"metadata record {record.key.object_key} is too large: {exc}") from None
        self._audit_change(principal, record.key, stored, what)
        if expected is None:  # a new record: the shares made before it
            try:
                stored.share = self.mirror_shares(stored.clinic_id, stored.key.study_uid, stored.key.series_uid,
                                                  only_if_shared=True).get(stored.key.series_uid, stored.share)
            except (BackendUnavailable, StorageError):
                logger.exception("share state of new record %s not mirrored (run 'gateway sync-share-state')",
                                 stored.key.object_key)
        return self.document(stored, with_annotations=True, with_share=True)

    def _stale(self, key: MetadataKey, expected: int | None, current: MetadataRecord | None) -> PreconditionFailed:
        document = self.document(current, with_annotations=True, with_share=True) if current else None
        if expected is None:
            message = f"{key.object_key} has metadata already (version {current.version if current else '?'}): " \
                      "update it with If-Match"
        else:
            message = (f"{key.object_key} is at version {current.version}, not {expected}: merge your change into "
                       "the current record and send it again with its ETag") if current else \
                      f"{key.object_key} has no metadata (it was deleted)"
        return PreconditionFailed(message, current=document)

    def _audit_change(self, principal: Principal, key: MetadataKey, stored: MetadataRecord, what: str) -> None:
        self.audit.record(AUDIT_ACTION, OK, principal=principal, resource=self._resource(key),
                          resource_clinic=stored.clinic_id, detail=f"{what}: version {stored.version}")

    # --- annotations ------------------------------------------------------------------------
    def _set_annotations(self, record: MetadataRecord, annotations: list) -> None:
        data = json.dumps(annotations, separators=(",", ":"), sort_keys=True).encode()
        if len(data) > self.annotations_max:
            raise PayloadTooLarge(f"annotations of {len(data)} bytes: at most metadata.max_annotations_bytes="
                                  f"{self.annotations_max}")
        if len(data) <= self.inline_max:
            record.annotations, record.annotations_ref = annotations, None
            return
        digest = hashlib.sha256(data).hexdigest()
        k = record.key
        blob_key = (f"metadata/{record.clinic_id}/{k.study_uid}/{k.series_uid}/{k.sop_uid}/{k.variant}/"
                    f"annotations-{digest[:16]}.json")
        self._put_blob(blob_key, data)
        record.annotations = []
        record.annotations_ref = {"key": blob_key, "sha256": digest, "size": len(data), "count": len(annotations)}

    def _put_blob(self, blob_key: str, data: bytes) -> None:
        try:
            if self.blobs.exists(blob_key):  # content-addressed: the same bytes are there already
                return
            staging = Path(self.blobs.staging_dir())
            staging.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=staging, suffix=".json")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            self.blobs.put_file(blob_key, Path(name))
        except (StorageError, OSError) as exc:
            raise BackendUnavailable(f"blob store failed: {exc}") from exc

    def _annotations(self, record: MetadataRecord) -> list:
        ref = record.annotations_ref
        if not ref:
            return record.annotations
        try:
            with self.blobs.open(ref["key"]) as fh:
                data = fh.read(self.annotations_max + 1)
        except (StorageError, OSError) as exc:
            raise BackendUnavailable(f"annotations of {record.key.object_key} unreadable: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise BackendUnavailable(f"annotations of {record.key.object_key} do not match their sha256")
        return json.loads(data)

    # --- shares -----------------------------------------------------------------------------
    def share_changed(self, share) -> None:
        """A share (:class:`storage.records.ShareRecord`) was created or revoked: mirror the
        share state of its study (series) into the records. A failure is logged, not raised: the
        share itself is made, and ``gateway sync-share-state`` mirrors again."""
        try:
            self.mirror_shares(share.clinic_id, share.study_uid, share.series_uid)
        except (BackendUnavailable, StorageError):
            logger.exception("share state of study %s of clinic %s not mirrored into its image metadata (run "
                             "'gateway sync-share-state')", share.study_uid, share.clinic_id)

    def mirror_shares(self, clinic_id: str, study_uid: str, series_uid: str | None = None, *,
                      only_if_shared: bool = False) -> dict[str, dict | None]:
        """Set the share state of the records of a study (of one series) to the study's active
        shares as the share store has them now; series → the state set. ``only_if_shared``:
        nothing to do when the study has no active share (a new record has none mirrored)."""
        stamp = time.time_ns() // 1000  # before the read: a mirror that read later wins
        shares = self._active_shares(clinic_id, study_uid)
        if only_if_shared and not shares:
            return {}
        series = [series_uid] if series_uid else sorted({r.key.series_uid for r in self.records(clinic_id,
                                                                                                study=study_uid)})
        states = {}
        for uid in series:
            states[uid] = share_state(shares, uid)
            self._call(self.store.set_share, clinic_id, study_uid, uid, states[uid], stamp=stamp)
        return states

    def sync_share_state(self, clinic_id: str) -> tuple[int, int]:
        """Mirror the share state of every record of a clinic again; (studies, records)."""
        studies: set[str] = set()
        records = 0
        for record in self.records(clinic_id):
            studies.add(record.key.study_uid)
            records += 1
        for study in sorted(studies):
            self.mirror_shares(clinic_id, study)
        return len(studies), records

    def _active_shares(self, clinic_id: str, study_uid: str | None = None):
        try:
            return self.shares.list_shares(clinic_id=clinic_id, active_at=now_ms(), limit=100_000,
                                           study_uid=study_uid)
        except StorageError as exc:
            raise BackendUnavailable(f"share store failed: {exc}") from exc

    @staticmethod
    def share_document(record: MetadataRecord, visible: frozenset[str] | None = None,
                       now: int | None = None) -> dict[str, Any]:
        """``share {targets, expiresAt}`` as the API shows it: the mirrored targets unexpired at
        ``now`` (of the shares ``visible``, when given)."""
        now = now_ms() if now is None else now
        targets = [t for t in (record.share or {}).get("targets") or ()
                   if t["expiresAt"] > now and (visible is None or t.get("share") in visible)]
        shown = []
        for target in targets:
            out = {"shareId": target.get("share"), "type": target["type"]}
            out.update({name: target[name] for name in ("id", "clinic") if target.get(name)})
            out["permissions"] = list(target["permissions"])
            out["expiresAt"] = iso(target["expiresAt"])
            shown.append(out)
        return {"targets": shown, "expiresAt": iso(max((t["expiresAt"] for t in targets), default=None))}

    # --- the document -------------------------------------------------------------------------
    def document(self, record: MetadataRecord, *, with_annotations: bool, with_share: bool,
                 shares: frozenset[str] | None = None, now: int | None = None) -> dict[str, Any]:
        k = record.key
        body: dict[str, Any] = {
            "objectKey": k.object_key, "study": k.study_uid, "series": k.series_uid, "instance": k.sop_uid,
            "variant": k.variant, "clinic": record.clinic_id, "owner": record.owner, "type": record.object_type,
            "viewerState": copy.deepcopy(record.viewer_state), "tags": list(record.tags),
            "patientId": record.patient_id, "studyDate": record.study_date, "version": record.version,
            "createdAt": iso(record.created_at), "updatedAt": iso(record.updated_at),
            "updatedBy": record.updated_by,
        }
        ref = record.annotations_ref
        if ref:
            body["annotationsRef"] = {"sha256": ref["sha256"], "size": ref["size"], "count": ref["count"]}
        if with_annotations or not ref:
            body["annotations"] = self._annotations(record) if with_annotations else list(record.annotations)
        if record.source:
            body["source"] = {kind: {n: v for n, v in value.items() if n != "key"}
                              for kind, value in record.source.items()}
        if with_share:
            body["share"] = self.share_document(record, shares, now)
        return body

    # --- sidecars ---------------------------------------------------------------------------
    def sidecar(self, principal: Principal, key: MetadataKey) -> tuple[str, dict[str, Any]]:
        """The sidecar file name (the image's name in the zip layout, ``.json``) and its content."""
        image = self._readable(principal, key)
        record = self._call(self.store.get, image.clinic_id, key)
        if record is None:
            raise NotFound(f"image {key.object_key} has no metadata yet")
        path = self.sidecar_paths(Principal.system(image.clinic_id, "sidecar"), key.study_uid, key.series_uid)
        return path.get((key.sop_uid, key.variant), _sidecar_name(key.sop_uid, key.variant)), \
            self.sidecar_document(record, path.get((key.sop_uid, "original")), shares=self._visible_shares(image))

    def sidecar_paths(self, principal: Principal, study: str, series: str | None = None) -> dict:
        """(SOP Instance UID, variant) → the sidecar's path in the zip layout, for every instance
        of the study (series) and variant."""
        names = self.names(principal, study, series)
        paths = {}
        for sop, name in names.items():
            stem = name[:-4] if name.endswith(".dcm") else name
            for variant in ("original", "preview", "mini-ct"):
                paths[(sop, variant)] = stem + (".json" if variant == "original" else f".{variant}.json")
        return paths

    def sidecar_document(self, record: MetadataRecord, image_path: str | None, *, shares=None) -> dict[str, Any]:
        body = self.document(record, with_annotations=True, with_share=True, shares=shares)
        return {"format": "dental-pacs-gateway.metadata-sidecar/1",
                "image": (image_path[:-5] + ".dcm") if image_path else None, **body}

    def records(self, clinic_id: str, *, study: str | None = None, page: int = 500) -> Iterator[MetadataRecord]:
        """Every record of a clinic (of a study), in search order, read in pages."""
        offset = 0
        while True:
            found = self._call(self.store.search, MetadataQuery(clinic_id, study_uid=study, limit=page,
                                                                offset=offset))
            yield from found
            if len(found) < page:
                return
            offset += page

    # --- legacy .prj sidecars --------------------------------------------------------------------
    def import_prj(self, principal: Principal, key: MetadataKey, data: bytes, *, name: str,
                   blob_key: str | None = None) -> tuple[str, str]:
        """One ``.prj`` file (its bytes) as the record of ``key`` in the principal's clinic:
        ``("converted", version)``, ``("skipped", why)`` or ``("failed", why)``. Idempotent: the
        same file again is skipped; a record that exists otherwise is never overwritten. The
        original XML is kept in the blob store (``blob_key`` when it is there already)."""
        resource = self._resource(key)
        self.access.require(principal, policy.WRITE, resource=resource)
        image = self._image(principal.clinic_id, key)
        if image is None:
            return "failed", f"image {key.object_key} is not stored in clinic {principal.clinic_id}"
        digest = hashlib.sha256(data).hexdigest()
        existing = self._call(self.store.get, image.clinic_id, key)
        if existing is not None:
            previous = (existing.source or {}).get("prj") or {}
            return "skipped", ("unchanged (imported before)" if previous.get("sha256") == digest else
                               f"has metadata already (version {existing.version}): not overwritten")
        try:
            content = parse_prj(data)
        except PrjError as exc:
            return "failed", f"{name}: {exc}"
        now = now_ms()
        k = key
        if blob_key is None:
            blob_key = f"metadata/{image.clinic_id}/{k.study_uid}/{k.series_uid}/{k.sop_uid}/{k.variant}/" \
                       f"prj-{digest[:16]}.xml"
            self._put_blob(blob_key, data)
        record = MetadataRecord(clinic_id=image.clinic_id, key=key, owner=principal.user_id,
                                object_type=content.object_type or image.object_type,
                                viewer_state=content.viewer_state, tags=content.tags, created_at=now,
                                source={"prj": {"key": blob_key, "sha256": digest, "name": name,
                                                "ignored": content.ignored[:100]}})
        self._set_annotations(record, content.annotations)
        try:
            stored = self._store(principal, image, record, None, now, what=f"import of {name}")
        except PreconditionFailed:
            return "skipped", "has metadata already (made meanwhile): not overwritten"
        return "converted", f"version {stored['version']}"

    # --- deletes ----------------------------------------------------------------------------
    def deleted(self, clinic_id: str, study: str, series: str | None, sop: str | None) -> None:
        """A study, a series (``series``) or an instance (``series`` and ``sop``) is gone from its
        clinic (:class:`gateway.services.delete.DeleteService`): its records go too, every variant,
        with their history and blobs."""
        removed = self.store.delete_records(clinic_id, study, series, sop)
        prefix = "/".join(p for p in ("metadata", clinic_id, study, series, sop) if p) + "/"
        for blob_key in list(self.blobs.keys(prefix)):
            self.blobs.delete(blob_key)
        if removed:
            logger.info("deleted %d metadata record(s) of %s of clinic %s", removed,
                        resource_name(study, series, sop), clinic_id)


def share_state(shares, series_uid: str) -> dict[str, Any] | None:
    """The mirrored share state of a series' records: its study's active shares that reach the
    series (whole-study shares and its own), None when there is none."""
    targets = []
    for share in sorted(shares, key=lambda s: (s.created_at, s.id)):
        if share.series_uid not in (None, series_uid):
            continue
        target: dict[str, Any] = {"share": share.id, "type": share.target_type}
        if share.target_id:
            target["id"] = share.target_id
        if share.target_clinic:
            target["clinic"] = share.target_clinic
        target["permissions"] = list(share.permissions)
        target["expiresAt"] = share.expires_at
        targets.append(target)
    return {"targets": targets} if targets else None


def _sidecar_name(sop: str, variant: str) -> str:
    return f"{sop}.json" if variant == "original" else f"{sop}.{variant}.json"


__all__ = ["MetadataService", "PreconditionFailed", "etag", "expected_version"]
