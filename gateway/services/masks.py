"""AI segmentation masks: mask groups of an annotation, PNG objects uploaded by signed URL,
checked and recorded by ``complete``.

The flow, for a group of an annotation of a series:

1. :meth:`MaskService.sign_uploads`: for each (slice, label) the client names with the size
   and sha256 of its PNG, a PUT URL for the object ``mask/{annotation}/{group}/{slice:04d}_{label}.png``
   (blob key: the same inside the clinic's namespace, ``mask/{clinic}/...``). With a blob
   store that takes uploads itself (S3) it is the store's presigned PUT, carrying the content
   type, the exact length and the checksum, so the bytes never pass through the gateway;
   otherwise a gateway URL (``PUT /api/v1/blob-uploads/{key}``) HMAC-signed like every
   signed URL (:mod:`auth.signing`), served by :meth:`MaskService.receive_upload`, which
   enforces the three while it streams to a staging file. A slice outside the series is
   refused here. What was signed is kept as a pending upload.
2. The client PUTs the objects (in parallel).
3. :meth:`MaskService.complete`: every named (or every pending) object must exist with the
   signed size and sha256 and be a PNG (its IHDR gives width and height; nothing is decoded)
   as wide as its slice's Columns and as high as its Rows (from the index, no blob read).
   Any missing or wrong object is named in a 400 and nothing is recorded; otherwise the masks
   are recorded in one transaction. Completing again answers the same masks.
"""
from __future__ import annotations

import hashlib
import logging
import re
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable
from urllib.parse import quote, urlencode

from auth import policy
from auth.access import AccessControl
from auth.audit import OK, AuditService
from auth.base import Principal
from auth.signing import UrlSigner
from gateway.errors import (
    BackendUnavailable,
    BadRequest,
    NotAuthorized,
    NotFound,
    PayloadTooLarge,
)
from gateway.services.annotations import (
    AnnotationService,
    blob_key,
    mask_prefix,
    new_id,
    now_ms,
    object_key,
    stored,
)
from storage.base import BlobStore, InstanceIndex, MaskStore
from storage.errors import ObjectNotFound, StorageError
from storage.records import AnnotationRecord, MaskGroupRecord, MaskRecord, MaskUpload

logger = logging.getLogger(__name__)

PNG = "image/png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_PATH = "/api/v1/blob-uploads/"
CHUNK = 256 * 1024
_CHECK_THREADS = 8  # objects checked at once by complete (S3 round trips overlap)


def png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's first 24 bytes (signature, then the IHDR chunk); None when it is none."""
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    length, = struct.unpack(">I", head[8:12])
    width, height = struct.unpack(">II", head[16:24])
    if length != 13 or not width or not height:
        return None
    return width, height


@dataclass
class SignedUpload:
    slice_index: int
    label: str
    object_key: str
    url: str
    method: str
    headers: dict[str, str]
    size: int
    sha256: str
    sop_uid: str | None
    expires_at: int  # ms


@dataclass
class Completed:
    group: MaskGroupRecord
    masks: list[MaskRecord]  # every mask named (or every mask of the group)
    recorded: int  # of them, recorded by this call
    already: int  # of them, recorded before


@dataclass
class Problem:
    slice_index: int
    label: str
    object_key: str
    reason: str

    def as_dict(self) -> dict:
        return {"slice": self.slice_index, "label": self.label, "key": self.object_key, "reason": self.reason}


class MaskService:
    def __init__(self, masks: MaskStore, annotations: AnnotationService, index: InstanceIndex, blobs: BlobStore,
                 signer: UrlSigner, *, access: AccessControl, audit: AuditService, settings):
        self.masks = masks
        self.annotations = annotations
        self.index = index
        self.blobs = blobs
        self.signer = signer
        self.access = access
        self.audit = audit
        self.max_bytes = settings["masks.max_bytes"]
        self.max_batch = settings["masks.max_batch"]

    # --- groups ----------------------------------------------------------------------------
    def create_group(self, principal: Principal, annotation_id: str, *, name: str, model_name: str | None = None,
                     model_version: str | None = None, modality: str | None = None, slice_count: int | None = None,
                     mask_type: str = "segmentation", description: str | None = None) -> MaskGroupRecord:
        annotation = self.annotations.get(principal, annotation_id, policy.WRITE)
        if not annotation.series_uid:
            raise BadRequest(f"annotation {annotation_id} names no series: masks are slices of a series")
        slices = len(self._series_slices(annotation))
        if slice_count is not None and slice_count > slices:
            raise BadRequest(f"slice_count {slice_count} is more than the {slices} slice(s) of series "
                             f"{annotation.series_uid}")
        group = MaskGroupRecord(new_id(), principal.clinic_id, annotation_id, name, model_name, model_version,
                                modality, slice_count, mask_type, description, principal.user_id, now_ms())
        try:
            self.masks.add_group(group)
        except ObjectNotFound:  # the annotation was deleted meanwhile
            raise NotFound(f"annotation {annotation_id} not found") from None
        except StorageError as exc:
            raise BackendUnavailable(f"mask group store failed: {exc}") from exc
        self.annotations.record_write(principal, "create", f"mask-group:{group.id}",
                                      detail=f"annotation {annotation_id}, {name}")
        return group

    def list_groups(self, principal: Principal, annotation_id: str) -> list[MaskGroupRecord]:
        self.annotations.get(principal, annotation_id)
        return stored(lambda: self.masks.list_groups(annotation_id), "mask group list")

    def get_group(self, principal: Principal, annotation_id: str, group_id: str,
                  action: str = policy.READ) -> tuple[AnnotationRecord, MaskGroupRecord]:
        annotation = self.annotations.get(principal, annotation_id, action)
        group = stored(lambda: self.masks.get_group(group_id), "mask group lookup")
        if group is not None and group.annotation_id != annotation_id:
            group = None  # another annotation's group (of the same clinic: the annotation check passed)
        return annotation, self.annotations.owned(principal, action, "mask-group", group_id, group)

    def delete_group(self, principal: Principal, annotation_id: str, group_id: str) -> int:
        annotation, group = self.get_group(principal, annotation_id, group_id, policy.DELETE)
        if not stored(lambda: self.masks.delete_group(group_id), "mask group delete"):
            raise NotFound(f"mask-group {group_id} not found")
        removed = self.annotations.delete_objects(mask_prefix(annotation.clinic_id, annotation.id, group.id))
        self.annotations.record_write(principal, "delete", f"mask-group:{group_id}", detail=f"{removed} object(s)")
        return removed

    # --- signed uploads --------------------------------------------------------------------
    def _series_slices(self, annotation: AnnotationRecord) -> list[str]:
        """The SOP Instance UID of each slice of the annotation's series, in slice order: the
        instances in instance-number order, or the frames of a lone multi-frame instance (a CBCT)."""
        instances = stored(lambda: self.index.instances(annotation.clinic_id, annotation.study_uid,
                                                        annotation.series_uid), "index lookup")
        if len(instances) == 1 and (instances[0].number_of_frames or 1) > 1:
            return [instances[0].sop_uid] * instances[0].number_of_frames
        return [record.sop_uid for record in instances]

    def _slice_sizes(self, annotation: AnnotationRecord) -> dict[str, tuple[int, int]]:
        """SOP Instance UID → (Columns, Rows) of each image of the annotation's series, as indexed
        (instances indexed without both are left out: their masks are not size-checked)."""
        instances = stored(lambda: self.index.instances(annotation.clinic_id, annotation.study_uid,
                                                        annotation.series_uid), "index lookup")
        return {r.sop_uid: (r.columns, r.rows) for r in instances if r.columns and r.rows}

    def _check_items(self, items: list[dict], group: MaskGroupRecord, slices: int) -> None:
        if not items:
            raise BadRequest('"masks" is empty: name at least one {slice, label, size, sha256}')
        if len(items) > self.max_batch:
            raise PayloadTooLarge(f"{len(items)} masks in one request; at most {self.max_batch} (masks.max_batch)")
        seen = set()
        limit = min(slices, group.slice_count) if group.slice_count is not None else slices
        for n, item in enumerate(items):
            where = f"masks[{n}]"
            if not LABEL.match(item["label"]):
                raise BadRequest(f"{where}.label {item['label']!r}: letters, digits, '.', '_', '-' (at most 64, "
                                 "starting with a letter or digit)")
            if not 0 <= item["slice"] < limit:
                raise BadRequest(f"{where}.slice {item['slice']} is outside the series: slices 0 to {limit - 1}"
                                 + (f" (slice_count {group.slice_count})" if limit < slices else ""))
            if item["size"] <= 0:
                raise BadRequest(f"{where}.size must be positive")
            if item["size"] > self.max_bytes:
                raise PayloadTooLarge(f"{where}.size {item['size']}: a mask has at most {self.max_bytes} bytes "
                                      "(masks.max_bytes)")
            if not SHA256.match(item["sha256"]):
                raise BadRequest(f"{where}.sha256 must be 64 lower-case hexadecimal digits")
            key = (item["slice"], item["label"])
            if key in seen:
                raise BadRequest(f"{where}: slice {key[0]} label {key[1]} is named twice")
            seen.add(key)

    def sign_uploads(self, principal: Principal, annotation_id: str, group_id: str, items: list[dict], *,
                     ttl: int | None, base_url: str) -> list[SignedUpload]:
        """PUT URLs for ``items`` (``slice``, ``label``, ``size``, ``sha256`` hex), living ``ttl``
        seconds (``auth.signed_url_ttl`` by default, at most ``auth.signed_url_max_ttl``)."""
        annotation, group = self.get_group(principal, annotation_id, group_id, policy.WRITE)
        try:
            ttl = self.signer.ttl(ttl)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        slices = self._series_slices(annotation)
        self._check_items(items, group, len(slices))
        expires_at = now_ms() + ttl * 1000
        signed, pending = [], []
        for item in items:
            number, label, size, sha = item["slice"], item["label"], item["size"], item["sha256"]
            key = blob_key(principal.clinic_id, annotation_id, group_id, number, label)
            request = self.blobs.presigned_put(key, expires_in=ttl, content_type=PNG, content_length=size, sha256=sha)
            if request is None:  # the gateway takes the upload itself
                query = self.signer.sign("PUT", UPLOAD_PATH + key, principal,
                                         params={"ct": PNG, "size": size, "sha256": sha}, ttl=ttl)
                url = f"{base_url}{UPLOAD_PATH}{quote(key)}?{urlencode(query)}"
                method, headers = "PUT", {"Content-Type": PNG}
            else:
                url, method, headers = request.url, request.method, dict(request.headers)
            signed.append(SignedUpload(number, label, object_key(annotation_id, group_id, number, label), url,
                                       method, headers, size, sha, slices[number], expires_at))
            pending.append(MaskUpload(group_id, number, label, principal.clinic_id, key, size, sha, slices[number],
                                      expires_at, principal.user_id))
        stored(lambda: self.masks.add_uploads(pending), "mask upload store")
        self.audit.record("sign", OK, principal=principal, resource=f"mask-group:{group_id}",
                          resource_clinic=principal.clinic_id, detail=f"{len(signed)} mask upload URL(s), {ttl} s")
        return signed

    def receive_upload(self, principal: Principal, key: str, signed: dict[str, str], *, content_type: str | None,
                       content_length: int | None, body: Iterable[bytes]) -> tuple[int, str]:
        """The gateway-served PUT of a signed upload URL (``signed``: its verified query): the
        object must have the signed content type, length and sha256; it is streamed to a
        staging file and stored whole, or not at all. (bytes, sha256) of what was stored."""
        self.access.require(principal, policy.WRITE, resource=f"blob:{key}")
        if not key.startswith(f"mask/{principal.clinic_id}/"):
            raise NotAuthorized("this upload URL is not for an object of the principal's clinic")
        try:
            size, sha = int(signed.get("size", "")), signed.get("sha256", "")
        except ValueError:
            raise BadRequest("upload URL without a valid size") from None
        if (content_type or "") != signed.get("ct"):
            raise BadRequest(f"Content-Type {content_type or '(none)'} is not the signed {signed.get('ct')}")
        if content_length is not None and content_length > size:
            raise PayloadTooLarge(f"Content-Length {content_length} is more than the signed {size} bytes")
        if content_length is not None and content_length != size:
            raise BadRequest(f"Content-Length {content_length} is not the signed {size} bytes")
        staging = Path(self.blobs.staging_dir())
        digest, received = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=staging, prefix="mask-", suffix=".part", delete=False) as out:
            path = Path(out.name)
            try:
                for chunk in body:
                    received += len(chunk)
                    if received > size:
                        raise PayloadTooLarge(f"the body is longer than the signed {size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            except BaseException:
                out.close()
                path.unlink(missing_ok=True)
                raise
        try:
            if received != size:
                raise BadRequest(f"the body has {received} bytes, not the signed {size}")
            if digest.hexdigest() != sha:
                raise BadRequest(f"the body's sha256 {digest.hexdigest()} is not the signed {sha}")
            stored(lambda: self.blobs.put_file(key, path), "mask object store")
        finally:
            path.unlink(missing_ok=True)
        return received, sha

    # --- complete ---------------------------------------------------------------------------
    def _check_object(self, upload: MaskUpload) -> tuple[MaskUpload, tuple[int, int] | str]:
        """(upload, (width, height)) when the object is what was signed; (upload, reason) when not."""
        try:
            reader: BinaryIO = self.blobs.open(upload.blob_key)
        except ObjectNotFound:
            return upload, "not uploaded: no object under this key"
        except StorageError as exc:
            return upload, f"cannot be read: {exc}"
        digest, size, head = hashlib.sha256(), 0, b""
        with reader:
            while chunk := reader.read(CHUNK):
                if len(head) < 24:
                    head += chunk[:24 - len(head)]
                size += len(chunk)
                if size > upload.size:
                    return upload, f"has more than the signed {upload.size} bytes"
                digest.update(chunk)
        if size != upload.size:
            return upload, f"has {size} bytes, not the signed {upload.size}"
        if digest.hexdigest() != upload.sha256:
            return upload, f"sha256 {digest.hexdigest()} is not the signed {upload.sha256}"
        dimensions = png_size(head)
        if dimensions is None:
            return upload, "is not a PNG image (no PNG signature and IHDR chunk)"
        return upload, dimensions

    def complete(self, principal: Principal, annotation_id: str, group_id: str,
                 items: list[dict] | None) -> Completed:
        """Check and record the named masks (``slice``, ``label``), or every pending one."""
        annotation, group = self.get_group(principal, annotation_id, group_id, policy.WRITE)
        pending = {(u.slice_index, u.label): u for u in stored(lambda: self.masks.uploads(group_id), "mask uploads")}
        recorded = {(m.slice_index, m.label): m for m in stored(lambda: self.masks.list_masks(group_id), "mask list")}
        if items is None:
            wanted = sorted(pending) or sorted(recorded)
        else:
            wanted = list(dict.fromkeys((item["slice"], item["label"]) for item in items))
        problems: list[Problem] = []
        to_check: list[MaskUpload] = []
        for number, label in wanted:
            if (number, label) in pending:
                to_check.append(pending[number, label])
            elif (number, label) not in recorded:
                problems.append(Problem(number, label, object_key(annotation_id, group_id, number, label),
                                        "no upload URL was signed for this slice and label"))
        with ThreadPoolExecutor(max_workers=min(_CHECK_THREADS, max(1, len(to_check)))) as pool:
            checked = list(pool.map(self._check_object, to_check))
        sizes = self._slice_sizes(annotation) if checked else {}
        now = now_ms()
        new_masks = []
        for upload, result in checked:
            expected = sizes.get(upload.sop_uid)
            if not isinstance(result, str) and expected is not None and result != expected:
                result = (f"is {result[0]}x{result[1]} pixels (width x height), but its slice (instance "
                          f"{upload.sop_uid}) is {expected[0]}x{expected[1]} (Columns x Rows)")
            if isinstance(result, str):
                problems.append(Problem(upload.slice_index, upload.label,
                                        object_key(annotation_id, group_id, upload.slice_index, upload.label), result))
                continue
            previous = recorded.get((upload.slice_index, upload.label))
            new_masks.append(MaskRecord(previous.id if previous else new_id(), group_id, principal.clinic_id,
                                        annotation_id, upload.slice_index, upload.label, upload.blob_key, upload.size,
                                        upload.sha256, result[0], result[1], PNG, upload.sop_uid, principal.user_id,
                                        now))
        if problems:
            problems.sort(key=lambda p: (p.slice_index, p.label))
            raise BadRequest(f"{len(problems)} of {len(wanted)} mask object(s) missing or wrong; nothing recorded",
                             objects=[p.as_dict() for p in problems])
        fresh = {(m.slice_index, m.label): m for m in stored(lambda: self.masks.record_masks(new_masks),
                                                             "mask record")} if new_masks else {}
        masks = [fresh.get(key) or recorded[key] for key in wanted]
        if fresh:
            self.annotations.record_write(principal, "create", f"mask-group:{group_id}",
                                          detail=f"{len(fresh)} mask(s) recorded")
        return Completed(group, masks, len(fresh), len(masks) - len(fresh))

    # --- masks -----------------------------------------------------------------------------
    def list_masks(self, principal: Principal, annotation_id: str, group_id: str, *, limit: int,
                   offset: int) -> list[MaskRecord]:
        self.get_group(principal, annotation_id, group_id)
        return stored(lambda: self.masks.list_masks(group_id, limit=limit, offset=offset), "mask list")

    def get_mask(self, principal: Principal, annotation_id: str, group_id: str, mask_id: str) -> MaskRecord:
        self.get_group(principal, annotation_id, group_id)
        mask = stored(lambda: self.masks.get_mask(mask_id), "mask lookup")
        if mask is not None and mask.group_id != group_id:
            mask = None
        return self.annotations.owned(principal, policy.READ, "mask", mask_id, mask)

    def download_url(self, principal: Principal, mask: MaskRecord, *, base_url: str,
                     ttl: int | None = None) -> tuple[str, int]:
        """A short-lived URL of the mask's PNG and its expiry (ms): the store's presigned GET
        (S3), else a signed gateway URL of :meth:`open_mask`'s endpoint."""
        seconds = self.signer.ttl(ttl)
        presign = getattr(self.blobs, "presigned_get_url", None)
        name = f"{mask.slice_index:04d}_{mask.label}.png"
        if presign is not None:
            url = presign(mask.blob_key, expires_in=seconds, download_name=name, content_type=PNG)
        else:
            path = content_path(mask)
            url = f"{base_url}{path}?{urlencode(self.signer.sign('GET', path, principal, ttl=seconds))}"
        return url, now_ms() + seconds * 1000

    def open_mask(self, principal: Principal, annotation_id: str, group_id: str, mask_id: str
                  ) -> tuple[MaskRecord, BinaryIO]:
        mask = self.get_mask(principal, annotation_id, group_id, mask_id)
        try:
            reader = self.blobs.open(mask.blob_key)
        except ObjectNotFound:
            raise NotFound(f"mask {mask_id}: its object is gone") from None
        except StorageError as exc:
            raise BackendUnavailable(f"mask object read failed: {exc}") from exc
        self.audit.record("read", OK, principal=principal, resource=f"mask-group:{group_id}",
                          resource_clinic=mask.clinic_id)
        return mask, reader


def content_path(mask: MaskRecord) -> str:
    return f"/api/v1/annotations/{mask.annotation_id}/mask-groups/{mask.group_id}/masks/{mask.id}/content"
