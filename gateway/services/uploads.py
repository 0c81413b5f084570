"""Zip uploads of whole studies: the archive is read as a stream and every DICOM entry goes
through the one ingest path as soon as it is complete.

An *upload* is opened, receives one or more archives (*parts*: a client whose connection
dropped sends a new archive with the entries it still has to send, which it reads from the
listing), and is completed (the expected number of instances is checked, the
``upload_completed`` hook fires). Its entries, its state and its events live in the upload
store (:class:`storage.base.UploadStore`, in the index database), so that any gateway
process answers for it.

Memory stays bounded whatever the archive: ``stream-unzip`` (a maintained streaming
unzipper: deflate, ZIP64) yields each entry in chunks, ingest spools it to its staging
folder, and entries are parsed and committed in batches on a few threads while the next ones
arrive (disk: the batches in flight). The guards of
:class:`ArchiveGuard` refuse what a hostile archive does, naming the entry and the rule:
names that climb out (``../``) or are absolute, encrypted entries, compression methods the
unzipper does not know, oversized or over-compressed entries (zip bombs), a total beyond the
limit, an archive cut off mid-entry, a CRC mismatch, bytes that are not a zip, and — known
only from the central directory at the end — symlink entries and entries the local headers
did not show. Entries before the bad one that were complete and valid stay stored; nothing
of the bad entry is kept.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import logging
import os
import re
import secrets
import stat
import struct
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import stream_unzip

from auth import policy
from auth.audit import OK
from auth.base import Principal
from gateway.errors import BackendUnavailable, BadRequest, GatewayError, NotFound
from gateway.services.ingest import IngestService, InstanceOutcome, StagedInstance
from storage.errors import StorageError
from storage.records import Upload, UploadEntry, UploadEvent

logger = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".prj", ".json")  # the desktop viewer's per-image files, kept for the metadata import
COMMIT_BATCH = 32  # entries indexed per transaction (as a STOW request's)
# Batches parsed and committed at once beside the thread reading the archive (each commit
# waits on fsyncs and the index: a single stream would otherwise idle on them).
COMMIT_THREADS = 3
_CHUNK = 1024 * 1024
_DICM_OFFSET = 128


def now_ms() -> int:
    return int(time.time() * 1000)


class ArchiveRefused(GatewayError):
    """A hostile or broken archive: 400 (413 for size limits) naming the entry and the rule."""

    http_status = 400

    def __init__(self, message: str, *, rule: str, entry: str | None = None, status: int = 400):
        super().__init__(message, rule=rule, **({"entry": entry} if entry is not None else {}))
        self.http_status = status
        self.rule = rule
        self.entry = entry


class UploadClosed(GatewayError):
    """The upload is complete or expired: it takes no more archives."""

    http_status = 409


@dataclass
class PartResult:
    """What one archive did: its entries (in order) and, if it was refused, why."""

    part: int
    bytes: int = 0
    entries: list[UploadEntry] = field(default_factory=list)
    error: ArchiveRefused | None = None


@dataclass(frozen=True)
class Limits:
    max_entry_bytes: int
    max_total_bytes: int
    max_ratio: float
    ratio_min_bytes: int
    max_entries: int
    max_central_directory: int

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings["upload.max_entry_bytes"], settings["upload.max_total_bytes"],
                   settings["upload.max_compression_ratio"], settings["upload.ratio_check_after"],
                   settings["upload.max_entries"], settings["upload.max_central_directory"])


# --- reading the archive -------------------------------------------------------------------------

def slice_size(limits: "Limits") -> int:
    """The unzipper is fed pieces of at most this size: what it has read ahead of the entry it
    unpacks (which the compression ratio cannot see) is at most one piece, so a piece is kept at
    half the packed size of an entry at the ratio limit when the ratio is first checked."""
    return max(16 * 1024, int(limits.ratio_min_bytes / limits.max_ratio / 2))


class _CountingTail:
    """The request's chunks in slices, counted, with the last bytes kept for the central directory."""

    def __init__(self, chunks: Iterable[bytes], keep: int, piece: int):
        self._chunks = chunks
        self.piece = piece
        self.count = 0
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._keep = keep

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            for start in range(0, len(chunk), self.piece):
                piece = chunk[start:start + self.piece] if len(chunk) > self.piece else chunk
                self.count += len(piece)
                self._tail.append(piece)
                self._tail_size += len(piece)
                while self._tail and self._tail_size - len(self._tail[0]) >= self._keep:
                    self._tail_size -= len(self._tail.popleft())
                yield piece

    def entry_started(self) -> None:
        """The unzipper has read an entry's local header: the central directory comes after it,
        and the pieces before the one being read ended inside that header (the unzipper needed
        this piece to finish it), so only this piece onwards may hold any of the directory.
        What is kept is then about one entry, not ``keep`` bytes of every archive."""
        while len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft())

    def tail(self) -> tuple[bytes, int]:
        """The kept bytes and the archive offset of their first byte."""
        data = b"".join(self._tail)
        return data, self.count - len(data)


def _entry_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")  # the ZIP default when the UTF-8 flag is not set


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_name(name: str) -> None:
    """Refuse names an extracting tool would write outside its folder (the archive's entries
    are never written to a file system here, but such an archive is hostile)."""
    if not name or len(name) > 1024 or any(ord(c) < 32 for c in name):
        raise ArchiveRefused(f"entry name {name!r} is empty, too long or holds control characters",
                             rule="bad-name", entry=name)
    unixy = name.replace("\\", "/")
    if unixy.startswith("/") or _DRIVE.match(unixy):
        raise ArchiveRefused(f"entry {name!r} has an absolute path", rule="absolute-path", entry=name)
    if ".." in unixy.split("/"):
        raise ArchiveRefused(f"entry {name!r} climbs out of the archive (..)", rule="path-traversal", entry=name)


def _last_header_name(source: _CountingTail, seen: set[str]) -> str | None:
    """The name in the last local file header of the bytes read so far that is not an entry
    already unpacked (best effort: only for naming an entry whose header was refused)."""
    data, _ = source.tail()
    position = len(data)
    while (position := data.rfind(b"PK\x03\x04", 0, position)) >= 0:
        if position + 30 <= len(data):
            (name_len,) = struct.unpack_from("<H", data, position + 26)
            name = _entry_name(data[position + 30:position + 30 + name_len])
            if name_len and position + 30 + name_len <= len(data) and name not in seen:
                return name
    return None


class ArchiveGuard:
    """Counts what one archive unpacks and refuses zip bombs, entry by entry."""

    def __init__(self, limits: Limits, source: _CountingTail):
        self.limits = limits
        self.source = source
        self.total = 0
        self.entries = 0

    def entry(self, name: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveRefused(f"the archive holds more than upload.max_entries={self.limits.max_entries} entries "
                                 f"(at entry {name!r})", rule="too-many-entries", entry=name, status=413)
        start = self.source.count
        size = 0
        for chunk in chunks:
            size += len(chunk)
            self.total += len(chunk)
            if size > self.limits.max_entry_bytes:
                raise ArchiveRefused(f"entry {name!r} unpacks to more than upload.max_entry_bytes="
                                     f"{self.limits.max_entry_bytes} bytes", rule="entry-too-large", entry=name,
                                     status=413)
            if self.total > self.limits.max_total_bytes:
                raise ArchiveRefused(f"the archive unpacks to more than upload.max_total_bytes="
                                     f"{self.limits.max_total_bytes} bytes (at entry {name!r})",
                                     rule="archive-too-large", entry=name, status=413)
            packed = self.source.count - start + self.source.piece  # at most a piece was read before it began
            if size >= self.limits.ratio_min_bytes and size / packed > self.limits.max_ratio:
                raise ArchiveRefused(f"entry {name!r} is compressed more than upload.max_compression_ratio="
                                     f"{self.limits.max_ratio:g}:1 (a zip bomb?)", rule="compression-ratio",
                                     entry=name, status=413)
            yield chunk


def _unzip_error(exc: Exception, entry: str | None) -> ArchiveRefused:
    """stream-unzip's errors as the rule they break."""
    where = f"entry {entry!r}" if entry else "the archive"
    if isinstance(exc, (stream_unzip.MissingPasswordError, stream_unzip.EncryptionMechanismNotAllowed,
                        stream_unzip.PasswordError)):
        return ArchiveRefused(f"{where} is encrypted; send entries without a password", rule="encrypted",
                              entry=entry)
    if isinstance(exc, stream_unzip.UnsupportedCompressionTypeError):
        return ArchiveRefused(f"{where} uses compression method {exc.args[0] if exc.args else '?'}; use stored (0) "
                              "or deflate (8)", rule="unsupported-compression", entry=entry)
    if isinstance(exc, stream_unzip.NotStreamUnzippable):
        return ArchiveRefused(f"{where} is stored without its size in the local header, so it cannot be read as a "
                              "stream; use deflate", rule="not-streamable", entry=entry)
    if isinstance(exc, stream_unzip.UnsupportedFeatureError):
        return ArchiveRefused(f"{where} uses a ZIP feature that is not supported ({type(exc).__name__})",
                              rule="unsupported-feature", entry=entry)
    if isinstance(exc, stream_unzip.TruncatedDataError):
        return ArchiveRefused(f"the archive ends in the middle of {where}: it was cut off", rule="truncated",
                              entry=entry)
    if isinstance(exc, stream_unzip.CRC32IntegrityError):
        return ArchiveRefused(f"{where} does not match its CRC-32: the archive is damaged", rule="crc-mismatch",
                              entry=entry)
    if isinstance(exc, stream_unzip.IntegrityError):
        return ArchiveRefused(f"{where} does not match its recorded size: the archive is damaged",
                              rule="size-mismatch", entry=entry)
    if isinstance(exc, stream_unzip.UnexpectedSignatureError):
        if entry is None:
            return ArchiveRefused("the body is not a zip archive (no local file header where one was expected)",
                                  rule="not-a-zip")
        return ArchiveRefused(f"the archive is damaged after {where} (unexpected bytes where an entry should "
                              "start)", rule="not-a-zip", entry=entry)
    return ArchiveRefused(f"{where} cannot be unpacked: {type(exc).__name__}", rule="damaged", entry=entry)


@dataclass(frozen=True)
class _CentralEntry:
    name: str
    symlink: bool


def central_directory(tail: bytes, tail_offset: int) -> list[_CentralEntry]:
    """The entries of the central directory, read from the archive's last bytes. Raises
    :class:`ArchiveRefused` when it is missing, damaged or not within ``tail``."""
    eocd = tail.rfind(b"PK\x05\x06", max(0, len(tail) - 65_557))
    if eocd < 0 or len(tail) - eocd < 22:
        raise ArchiveRefused("the archive has no end of central directory record: it was cut off",
                             rule="truncated")
    (_, _, _, _, count, size, offset, _) = struct.unpack("<4sHHHHIIH", tail[eocd:eocd + 22])
    if 0xFFFFFFFF in (size, offset) or count == 0xFFFF:  # ZIP64: the locator is just before
        locator = eocd - 20
        if locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
            raise ArchiveRefused("the archive's ZIP64 end of central directory locator is missing", rule="damaged")
        (record_offset,) = struct.unpack("<Q", tail[locator + 8:locator + 16])
        start = record_offset - tail_offset
        if start < 0 or tail[start:start + 4] != b"PK\x06\x06":
            raise ArchiveRefused("the archive's ZIP64 end of central directory record is missing", rule="damaged")
        count, size, offset = struct.unpack("<QQQ", tail[start + 32:start + 56])
    start = offset - tail_offset
    if start < 0:
        raise ArchiveRefused("the archive's central directory is larger than upload.max_central_directory",
                             rule="too-many-entries", status=413)
    entries = []
    position = start
    for _ in range(count):
        if tail[position:position + 4] != b"PK\x01\x02" or position + 46 > len(tail):
            raise ArchiveRefused("the archive's central directory is damaged", rule="damaged")
        (made_by, _, _, _, _, _, _, _, _, name_len, extra_len, comment_len, _, _, external) = struct.unpack(
            "<HHHHHHIIIHHHHHI", tail[position + 4:position + 42])
        name = _entry_name(tail[position + 46:position + 46 + name_len])
        unix = made_by >> 8 == 3
        entries.append(_CentralEntry(name, unix and stat.S_ISLNK(external >> 16)))
        position += 46 + name_len + extra_len + comment_len
    return entries


# --- the service -----------------------------------------------------------------------------------

class UploadService:
    """Uploads of the principal's clinic (another clinic's upload is a 404, as if it did not exist)."""

    def __init__(self, store, ingest: IngestService, deleter, blobs, access, settings, plugin_manager, jobs):
        self.store = store
        self.ingest = ingest
        self.deleter = deleter
        self.blobs = blobs
        self.access = access
        self.settings = settings
        self.pm = plugin_manager
        self.jobs = jobs
        self.limits = Limits.from_settings(settings)
        self.expire_after_ms = settings["upload.expire_after"] * 1000
        # (principal, upload, entries) -> counts: the .prj sidecars made into image metadata when the
        # upload completes; set by Services.build.
        self.sidecar_import = None

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StorageError as exc:
            raise BackendUnavailable(f"upload store unreachable: {exc}") from exc

    # --- create, read ----------------------------------------------------------------------
    def create(self, principal: Principal, *, expected_study: str | None = None,
               expected_instances: int | None = None, client: str | None = None) -> Upload:
        self.ingest.authorize(principal)
        if expected_instances is not None and expected_instances < 1:
            raise BadRequest("expected_instances must be a positive number")
        now = now_ms()
        upload = Upload(id="u" + secrets.token_hex(12), clinic_id=principal.clinic_id,
                        created_by=principal.user_id, created_at=now, expires_at=now + self.expire_after_ms,
                        client=(client or None) and client[:200], expected_study=expected_study,
                        expected_instances=expected_instances, updated_at=now)
        self._call(self.store.create, upload)
        self.access.audit.record("store", OK, principal=principal, resource=f"upload:{upload.id}",
                                 resource_clinic=principal.clinic_id, detail="upload opened")
        return upload

    def get(self, principal: Principal, upload_id: str) -> Upload:
        """The upload, when the principal's clinic holds it and its role writes; an open upload
        past its expiry is expired now."""
        self.access.require(principal, policy.WRITE, resource=f"upload:{upload_id}")
        upload = self._call(self.store.get, upload_id)
        if upload is None or upload.clinic_id != principal.clinic_id:
            raise NotFound(f"upload {upload_id} not found")
        if upload.status == "open" and upload.expires_at <= now_ms():
            self._call(self.store.finish, upload_id, "expired", now_ms=now_ms(),
                       events=[("expired", {"expires_at": upload.expires_at})])
            upload = self._call(self.store.get, upload_id)
        return upload

    def list(self, principal: Principal, *, status: str | None = None, limit: int = 100,
             offset: int = 0) -> list[Upload]:
        self.access.require(principal, policy.WRITE, resource="uploads")
        return self._call(self.store.list_uploads, principal.clinic_id, status=status, limit=limit, offset=offset)

    def entries(self, principal: Principal, upload_id: str) -> list[UploadEntry]:
        self.get(principal, upload_id)
        return self._call(self.store.entries, upload_id)

    def events(self, principal: Principal, upload_id: str, *, after_id: int = 0) -> list[UploadEvent]:
        self.get(principal, upload_id)
        return self._call(self.store.events, upload_id, after_id=after_id)

    # --- receive an archive -------------------------------------------------------------------
    def receive(self, principal: Principal, upload_id: str, chunks: Iterable[bytes]) -> PartResult:
        """Unpack one archive into the upload; refusals are in ``result.error`` (what came
        before the bad entry is stored and listed)."""
        upload = self.get(principal, upload_id)
        if upload.status != "open":
            raise UploadClosed(f"upload {upload_id} is {upload.status}: open a new upload")
        part = self._call(self.store.start_part, upload_id, now_ms=now_ms(), expires_at=now_ms() + self.expire_after_ms)
        if part is None:
            raise UploadClosed(f"upload {upload_id} is no longer open")
        receiver = _PartReceiver(self, upload, principal, part)
        return receiver.run(chunks)

    # --- complete -----------------------------------------------------------------------------
    def complete(self, principal: Principal, upload_id: str) -> Upload:
        upload = self.get(principal, upload_id)
        if upload.status == "complete":
            return upload  # completing twice is harmless
        if upload.status != "open":
            raise UploadClosed(f"upload {upload_id} is {upload.status}")
        entries = self._call(self.store.entries, upload_id)
        instances = {e.sop_uid for e in entries if e.outcome in ("stored", "duplicate", "replaced") and e.sop_uid}
        if upload.expected_instances is not None and len(instances) < upload.expected_instances:
            raise UploadClosed(f"upload {upload_id} expects {upload.expected_instances} instances and holds "
                               f"{len(instances)}: send the missing ones (see its listing), then complete it",
                               expected=upload.expected_instances, stored=len(instances))
        series = sorted({(e.study_uid, e.series_uid) for e in entries
                         if e.outcome in ("stored", "duplicate", "replaced") and e.series_uid})
        summary = {"instances": len(instances), "series": [{"study": s, "series": se} for s, se in series]}
        if self.sidecar_import is not None and any(e.outcome == "sidecar" for e in entries):
            try:
                summary["metadata"] = self.sidecar_import(principal, upload, entries)
            except Exception:  # the instances are stored: a sidecar's failure must not undo the completion
                logger.exception("the .prj sidecars of upload %s were not imported", upload_id)
        if not self._call(self.store.finish, upload_id, "complete", now_ms=now_ms(), events=[("complete", summary)]):
            return self.get(principal, upload_id)
        upload = self.get(principal, upload_id)
        self.access.audit.record("store", OK, principal=principal, resource=f"upload:{upload_id}",
                                 resource_clinic=principal.clinic_id, detail=f"upload complete: {len(instances)} instance(s)")
        try:
            self.pm.hook.upload_completed(upload=upload, series=series, settings=self.settings, jobs=self.jobs)
        except Exception:  # a consumer's failure must not undo the completion
            logger.exception("upload_completed hook failed for %s", upload_id)
        return upload


class _PartReceiver:
    """One archive into one upload: unzip, classify, ingest in batches, record, guard."""

    def __init__(self, service: UploadService, upload: Upload, principal: Principal, part: int):
        self.service = service
        self.upload = upload
        self.principal = principal
        self.part = part
        self.result = PartResult(part)
        # Entries done but not yet recorded, in archive order; DICOM ones with their staged file.
        self.pending: list[tuple[UploadEntry, StagedInstance | None]] = []
        self.sidecars: list[tuple[UploadEntry, Path]] = []
        self.recorded_bytes = 0
        self.done = 0
        self._lock = threading.Lock()  # recording (the store, the result, the counters) is serial
        self._pool = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix=f"upload-{upload.id}")
        self._inflight: collections.deque[Future] = collections.deque()
        self.refused: set[str] = set()  # entries the central directory shows as symlinks
        self.directory_read = False  # sidecars are kept only then

    # --- the loop -------------------------------------------------------------------------------
    def run(self, chunks: Iterable[bytes]) -> PartResult:
        limits = self.service.limits
        source = _CountingTail(chunks, keep=limits.max_central_directory + 65_557, piece=slice_size(limits))
        guard = ArchiveGuard(limits, source)
        current: str | None = None
        names: list[str] = []
        try:
            try:
                for raw_name, _size, entry_chunks in stream_unzip.stream_unzip(
                        source, chunk_size=_CHUNK, allowed_encryption_mechanisms=(stream_unzip.NO_ENCRYPTION,)):
                    source.entry_started()
                    current = _entry_name(raw_name)
                    check_name(current)
                    names.append(current)
                    self._entry(current, guard.entry(current, entry_chunks), source)
                    current = None
            except stream_unzip.UnzipError as exc:
                # Errors of a local header (encrypted, unknown method) come before stream-unzip
                # yields the entry: its name is read from the header itself.
                raise _unzip_error(exc, current or _last_header_name(source, set(names))) from None
            tail, tail_offset = source.tail()
            self._check_central_directory(central_directory(tail, tail_offset), names)
        except ArchiveRefused as exc:
            self.result.error = exc
            logger.info("upload %s part %d refused: %s", self.upload.id, self.part, exc.message)
        except BaseException as exc:  # the body broke off (the client went away), a store failed
            self._end_part(source, lost=f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
            self._pool.shutdown(wait=True)
            raise
        try:
            self._end_part(source)
        finally:
            self._pool.shutdown(wait=True)
        return self.result

    def _end_part(self, source: _CountingTail, *, lost: str | None = None) -> None:
        """Record what the part did, and that it is over: a client resuming after a dropped
        connection waits for this (what was complete before the drop is stored by then)."""
        try:
            self._commit(source.count)
            self._wait_commits()
            self._store_sidecars(source.count, keep=self.directory_read and lost is None)
            self.result.bytes = source.count
            detail = {"part": self.part, "bytes": source.count, "entries": len(self.result.entries),
                      "state": "lost" if lost else "refused" if self.result.error else "done"}
            if self.result.error is not None:
                detail.update(error=self.result.error.message, rule=self.result.error.rule,
                              entry=self.result.error.entry)
            if lost:
                detail["error"] = lost
            self._record([], [("part", detail)], source.count)
        except GatewayError:
            if lost is None:
                raise
            logger.exception("upload %s part %d: what it did is not all recorded", self.upload.id, self.part)

    def _entry(self, name: str, chunks: Iterator[bytes], source: _CountingTail) -> None:
        base = PurePosixPath(name.replace("\\", "/"))
        entry = UploadEntry(self.upload.id, self.part, name, 0, "skipped", at=now_ms())
        if name.endswith(("/", "\\")):  # a folder
            self._drain(chunks)
            return
        if base.name.upper() == "DICOMDIR":
            entry.size = self._drain(chunks)
            entry.reason = "DICOMDIR (an index of the media, not an image)"
            self._settle(entry, source.count)
            return
        if base.suffix.lower() in SIDECAR_SUFFIXES:
            path, entry.size, entry.sha256 = self._spool(chunks)
            entry.outcome = "sidecar"
            entry.blob_key = f"uploads/{self.upload.clinic_id}/{self.upload.id}/{base.as_posix()}"
            entry.archive_offset = source.count
            self.sidecars.append((entry, path))
            return
        head, rest = _peek(chunks, _DICM_OFFSET + 4)
        if head[_DICM_OFFSET:_DICM_OFFSET + 4] != b"DICM" and base.suffix.lower() != ".dcm":
            entry.size = len(head) + self._drain(rest)
            entry.reason = "not a DICOM file (no DICM preamble)"
            self._settle(entry, source.count)
            return
        staged = self.service.ingest.stage(_chain(head, rest), inspect=False)  # parsed by the commit threads
        entry.size, entry.archive_offset = staged.size, source.count  # sha256: once hashed by the commit threads
        self.pending.append((entry, staged))
        if sum(1 for _, s in self.pending if s is not None) >= COMMIT_BATCH:
            self._commit(source.count)

    # --- outcomes -------------------------------------------------------------------------------
    def _settle(self, entry: UploadEntry, offset: int) -> None:
        entry.archive_offset = offset
        self.pending.append((entry, None))

    def _event(self, entry: UploadEntry) -> dict:
        self.done += 1
        body = {"name": entry.name, "outcome": entry.outcome, "size": entry.size, "part": self.part,
                "done": self.done, "bytes": entry.archive_offset}
        if self.upload.expected_instances:
            body["expected"] = self.upload.expected_instances
        for key in ("sop_uid", "series_uid", "reason"):
            if getattr(entry, key):
                body[key] = getattr(entry, key)
        return body

    def _commit(self, offset: int) -> None:
        """Hand the pending entries to a commit thread (at most COMMIT_THREADS batches in flight,
        so disk holds at most that many batches)."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        while len(self._inflight) >= COMMIT_THREADS:
            self._inflight.popleft().result()
        self._inflight.append(self._pool.submit(contextvars.copy_context().run, self._commit_batch, batch))

    def _wait_commits(self) -> None:
        while self._inflight:
            self._inflight.popleft().result()  # a commit's failure surfaces here

    def _commit_batch(self, batch: list[tuple[UploadEntry, StagedInstance | None]]) -> None:
        staged = [self.service.ingest.inspect(s) for _, s in batch if s is not None]
        outcomes = iter(self.service.ingest.commit_many(staged, principal=self.principal,
                                                        expected_study=self.upload.expected_study) if staged else [])
        for entry, item in batch:
            if item is not None:
                entry.sha256 = item.sha256
                _apply(entry, next(outcomes))
        entries = [e for e, _ in batch]
        self._record(entries, None, 0)

    def _record(self, entries: list[UploadEntry], events: list[tuple[str, dict]] | None, offset: int) -> None:
        """Record entries (with an ``entry`` event each when ``events`` is None) and events."""
        with self._lock:
            if events is None:
                events = [("entry", self._event(e)) for e in entries]
            received = max(0, offset - self.recorded_bytes)
            self.recorded_bytes += received
            self.result.entries.extend(entries)
            self.service._call(self.service.store.record, self.upload.id, entries=entries, events=events,
                               received=received, now_ms=now_ms())

    # --- sidecars and the central directory ------------------------------------------------------
    def _spool(self, chunks: Iterable[bytes]) -> tuple[Path, int, str]:
        staging = Path(self.service.blobs.staging_dir())
        staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=staging, suffix=".sidecar")
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except BaseException:
            os.unlink(name)
            raise
        return Path(name), size, digest.hexdigest()

    def _store_sidecars(self, offset: int, *, keep: bool) -> None:
        """Sidecars are kept once the central directory said they are plain files (a symlink
        entry looks like any other until then); those of a broken archive are sent again."""
        sidecars, self.sidecars = self.sidecars, []
        stored = []
        for entry, path in sidecars:
            if not keep or entry.name in self.refused:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                entry.outcome, entry.blob_key = "rejected", None
                entry.reason = ("a symbolic link: refused" if entry.name in self.refused else
                                "not kept: the archive did not end with its central directory (send it again)")
                stored.append(entry)
                continue
            try:
                self.service.blobs.put_file(entry.blob_key, path)
                stored.append(entry)
            except (StorageError, OSError) as exc:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                entry.outcome, entry.reason, entry.blob_key = "rejected", f"sidecar not stored: {exc}", None
                stored.append(entry)
        if stored:
            self._record(stored, None, offset)

    def _check_central_directory(self, listed: list[_CentralEntry], names: list[str]) -> None:
        """Symlinks and entries the local headers did not show are only visible here: what
        such an entry stored is removed again before the archive is refused."""
        links = [e.name for e in listed if e.symlink]
        hidden = sorted({e.name for e in listed} - set(names))
        self.refused, self.directory_read = set(links), True
        if links:
            self._commit(0)
            self._wait_commits()
            self._undo(links, "a symlink entry")
            raise ArchiveRefused(f"entry {links[0]!r} is a symbolic link" + (f" (and {len(links) - 1} more)"
                                 if len(links) > 1 else ""), rule="symlink", entry=links[0])
        if hidden:
            raise ArchiveRefused(f"the central directory lists entry {hidden[0]!r}, which the archive's local headers "
                                 "do not hold (a zip built to fool some readers)", rule="hidden-entry", entry=hidden[0])

    def _undo(self, names: list[str], why: str) -> None:
        wanted = set(names)
        remover = Principal.system(self.upload.clinic_id, "upload")
        for entry in self.result.entries:
            if entry.name in wanted and entry.outcome in ("stored", "replaced") and entry.sop_uid:
                try:  # the one delete path: index row, then blob, then the plugins hear of it
                    self.service.deleter.delete(remover, entry.study_uid, entry.series_uid, entry.sop_uid)
                except GatewayError:
                    logger.exception("instance %s of %s left stored", entry.sop_uid, why)
        self.service._call(self.service.store.reject_entries, self.upload.id, self.part, names,
                           reason=f"{why}: refused", code=0xC000)
        for entry in self.result.entries:
            if entry.name in wanted:
                entry.outcome, entry.reason = "rejected", f"{why}: refused"

    @staticmethod
    def _drain(chunks: Iterable[bytes]) -> int:
        return sum(len(c) for c in chunks)


def _apply(entry: UploadEntry, outcome: InstanceOutcome) -> None:
    entry.outcome = outcome.status if outcome.ok else "rejected"
    entry.sop_uid, entry.study_uid, entry.series_uid = (outcome.sop_instance_uid, outcome.study_uid,
                                                        outcome.series_uid)
    if outcome.error is not None:
        entry.reason, entry.code = outcome.error.message, outcome.error.failure_reason


def _peek(chunks: Iterator[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    return head, chunks


def _chain(head: bytes, rest: Iterable[bytes], size: int = _CHUNK) -> Iterator[bytes]:
    """``head`` then ``rest``, in chunks of about ``size`` (a stored entry comes in the pieces the
    archive was read in: fewer, larger writes of the staging file)."""
    buffer = bytearray(head)
    for chunk in rest:
        buffer += chunk
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


__all__ = ["ArchiveRefused", "PartResult", "UploadClosed", "UploadService", "central_directory", "check_name"]
