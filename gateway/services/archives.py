"""Zip downloads of whole studies and series (the fast API's ``…/archive``): which instances,
under which names, in which order, and the archive's bytes.

- **Access** is WADO-RS retrieve's: :meth:`RetrieveService.instances` with ``need=download``
  (own clinic, or a share with ``download``; another clinic's study is a 404), which audits
  the read.
- **Names** ``{PatientID}/{StudyDate}_{StudyUID}/{SeriesNumber}_{SeriesUID}/{InstanceNumber:04d}.dcm``,
  from the index only (the study and series rows through the query service; InstanceNumber
  from the instance rows): no blob is read for them. Each part is made safe for every file
  system (:func:`safe_part`); an instance whose InstanceNumber is missing or repeated in its
  series is named by its SOP Instance UID; names are unique, also case-insensitively.
- **Slices** (``slices=a-b`` on a series): positions along the slice axis, from the index
  headers (ImagePositionPatient projected on the normal of ImageOrientationPatient;
  InstanceNumber when a position is missing), 1-based and inclusive. The entries keep the
  names they have in the whole series' archive.
- **Bytes**: stored entries by default, laid out by :mod:`gateway.services.ziplayout` so that
  the exact length, a strong ETag and any byte range are known before a byte is sent; or
  deflated by ``stream-zip`` (no length, no ranges). The CRC-32 of each instance comes from
  the index (computed at ingest); for instances stored by older versions it is computed here
  by reading the blob once (in chunks) before the response starts, and recorded in the index
  so that later downloads (a resumed one, ranges fetched in parallel) do not read it again.
  A data descriptor was the other choice: it would let the first byte go out sooner, but a
  range in the central directory would then need every CRC all the same.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Iterator

import stream_zip

from auth.access import DOWNLOAD
from auth.base import Principal
from gateway.errors import BackendUnavailable, BadRequest
from gateway.services.query import QueryService
from gateway.services.retrieve import RetrieveService
from gateway.services.ziplayout import Member, StoredZip, dos_datetime
from storage.base import InstanceIndex
from storage.errors import StorageError
from storage.records import InstanceRecord

logger = logging.getLogger(__name__)

LAYOUT_VERSION = "gw-zip-1"  # part of every ETag: a change of the layout code changes the tags
# zlib level 1: on CBCT pixel data about 4x the speed of level 6 (≈45 against ≈10 MB/s on one
# core through stream-zip) for about 4 % more bytes (46 % against 44 % of the stored size).
DEFLATE_LEVEL = 1
SLICES_RE = re.compile(r"^\s*(\d{1,9})\s*(?:-\s*(\d{1,9})\s*)?$")

_FORBIDDEN = set('<>:"/\\|?*')  # Windows refuses these; "/" and "\\" separate folders
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(10)), *(f"LPT{n}" for n in range(10)),
             "COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³", "CONIN$", "CONOUT$"}
MAX_PART = 64  # characters of one name part (UIDs and PatientID are at most 64 in DICOM)

# DICOM JSON tags read from the index rows and headers.
PATIENT_ID, STUDY_DATE, STUDY_TIME = "00100020", "00080020", "00080030"
SERIES_UID, SERIES_NUMBER = "0020000E", "00200011"
SOP_UID, INSTANCE_NUMBER, POSITION, ORIENTATION = "00080018", "00200013", "00200032", "00200037"


def safe_part(value: object, stand_in: str) -> str:
    """One part of an entry name that no file system refuses or misreads: no separators, no
    control or format characters, none of ``<>:"|?*``, no leading or trailing dots or spaces
    (so no ``.``/``..`` and no hidden files), not a reserved Windows device name, NFC, at most
    64 characters; ``stand_in`` when nothing is left."""
    text = unicodedata.normalize("NFC", "" if value is None else str(value))
    text = "".join("_" if ch in _FORBIDDEN or unicodedata.category(ch)[0] == "C" else ch for ch in text)
    text = text.strip(" .")[:MAX_PART].strip(" .")
    if not text:
        return stand_in
    if text.split(".")[0].upper() in _RESERVED:
        text = "_" + text
    return text


def safe_filename(value: str, suffix: str = ".zip") -> str:
    """A Content-Disposition filename: letters, digits, ``.``, ``_``, ``-`` only."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", value).strip("._")[:150] or "archive"
    return text + suffix


def _value(element: dict | None):
    values = (element or {}).get("Value") or []
    return values[0] if values else None


def _floats(element: dict | None, count: int) -> tuple[float, ...] | None:
    values = (element or {}).get("Value") or []
    if len(values) != count:
        return None
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return result if all(math.isfinite(v) for v in result) else None


def _study_time(date: str | None, time: str | None) -> datetime | None:
    """The entries' modification time: the study's date and time (deterministic, so the
    archive is the same bytes on every request)."""
    if not date or not re.fullmatch(r"\d{8}", str(date)):
        return None
    digits = re.sub(r"[^0-9]", "", str(time or "").split(".")[0])[:6].ljust(6, "0")
    try:
        return datetime.strptime(str(date) + digits, "%Y%m%d%H%M%S")
    except ValueError:
        try:
            return datetime.strptime(str(date), "%Y%m%d")
        except ValueError:
            return None


@dataclass
class SliceRange:
    first: int  # 1-based, inclusive
    last: int
    count: int  # slices in the series


def parse_slices(text: str, count: int) -> SliceRange:
    """``a-b`` (or ``a``) → the range, 400 naming the valid one when it is malformed or outside it."""
    valid = f"slices=1-{count}" if count > 1 else "slices=1"
    match = SLICES_RE.match(text or "")
    if not match:
        raise BadRequest(f"slices={text!r} is not a range of slice positions a-b (1-based, inclusive); "
                         f"this series has {count} slice(s): {valid}")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if first < 1 or last < first or last > count:
        raise BadRequest(f"slices={text.strip()} is outside the series' slice positions: it has {count} slice(s), "
                         f"give a range within {valid}")
    return SliceRange(first, last, count)


def slice_order(records: list[InstanceRecord], headers: Iterable[str]) -> list[InstanceRecord]:
    """The series' instances along the slice axis: ImagePositionPatient projected on the normal
    of ImageOrientationPatient (the cross product of its row and column vectors), when every
    instance has a position and one has an orientation; else by InstanceNumber. Ties by
    InstanceNumber, then SOP Instance UID."""
    positions: dict[str, tuple[float, ...] | None] = {}
    normal: tuple[float, float, float] | None = None
    for text in headers:
        header = json.loads(text)
        sop = _value(header.get(SOP_UID))
        if sop is None:
            continue
        positions[sop] = _floats(header.get(POSITION), 3)
        if normal is None and (orientation := _floats(header.get(ORIENTATION), 6)):
            r, c = orientation[:3], orientation[3:]
            cross = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
            if any(abs(v) > 1e-9 for v in cross):
                normal = cross

    def by_number(record: InstanceRecord):
        number = record.instance_number
        return (number is None, number if number is not None else 0, record.sop_uid)

    if normal is None or any(positions.get(r.sop_uid) is None for r in records):
        return sorted(records, key=by_number)

    def along(record: InstanceRecord):
        position = positions[record.sop_uid]
        return (sum(p * n for p, n in zip(position, normal)), *by_number(record))

    return sorted(records, key=along)


@dataclass
class Entry:
    name: str
    record: InstanceRecord


@dataclass
class Archive:
    """What a download sends: the entries in order, the file name, and (stored) the layout,
    exact length and ETag. Its byte generators run outside any request (they hold what they
    read with)."""

    filename: str
    entries: list[Entry]
    retrieve: RetrieveService
    modified: datetime | None
    layout: StoredZip | None = None  # None: deflated
    etag: str | None = None
    slices: SliceRange | None = None

    @property
    def compressed(self) -> bool:
        return self.layout is None

    @property
    def length(self) -> int | None:
        return self.layout.length if self.layout is not None else None

    def iter_bytes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The stored archive's bytes ``[start, stop)``."""
        assert self.layout is not None, "a deflated archive has no byte ranges"
        return self.layout.iter_bytes(start, stop)

    def iter_deflated(self) -> Iterator[bytes]:
        """The archive with deflated entries, by ``stream-zip`` (ZIP64 where an entry or the
        archive needs it)."""
        modified = self.modified or datetime(1980, 1, 1)
        retrieve = self.retrieve

        def members():
            for entry in self.entries:
                method = stream_zip.ZIP_AUTO(entry.record.size, level=DEFLATE_LEVEL)
                yield entry.name, modified, 0o644, method, retrieve.iter_bytes(entry.record)

        return stream_zip.stream_zip(members(), chunk_size=256 * 1024)


class ArchiveService:
    def __init__(self, retrieve: RetrieveService, query: QueryService, index: InstanceIndex):
        self.retrieve = retrieve
        self.query = query
        self.index = index

    def archive(self, principal: Principal, study: str, series: str | None = None, *,
                slices: str | None = None, compress: str | None = None) -> Archive:
        """The archive of a study (or one series, or slices of it) the principal may download."""
        if slices is not None and series is None:
            raise BadRequest("slices select positions within one series: ask for "
                             f"/api/v1/studies/{study}/series/{{series}}/archive?slices=a-b")
        if compress not in (None, "stored", "deflate"):
            raise BadRequest(f"compress={compress!r}: give deflate, or nothing for stored entries")
        records = self.retrieve.instances(principal, study, series, need=DOWNLOAD)
        names, series_numbers, modified = self._names(principal, study, series, records)
        chosen, selected = self._order(records, series_numbers), None
        if slices is not None:
            ordered = slice_order(records, self.retrieve.metadata(principal, study, series))
            selected = parse_slices(slices, len(ordered))
            chosen = ordered[selected.first - 1:selected.last]
        entries = [Entry(names[r.sop_uid], r) for r in chosen]
        filename = safe_filename(study if series is None else series if slices is None
                                 else f"{series}_slices_{selected.first}-{selected.last}")
        archive = Archive(filename, entries, self.retrieve, modified, slices=selected)
        if compress != "deflate":
            self._fill_crc32(entries)
            date_time = dos_datetime(modified)
            members = [Member(e.name, e.record.size, e.record.crc32, e.record, date_time) for e in entries]
            archive.layout = StoredZip(members, self.retrieve.open)
            archive.etag = self._etag(entries, date_time)
        return archive

    # --- names ----------------------------------------------------------------------------------
    def entry_names(self, principal: Principal, study: str, series: str | None = None) -> dict[str, str]:
        """Each instance's entry name in the archive of the study (series), by SOP Instance UID
        (the names sidecars are written beside)."""
        records = self.retrieve.instances(principal, study, series)
        return self._names(principal, study, series, records)[0]

    def _names(self, principal: Principal, study: str, series: str | None,
               records: list[InstanceRecord]) -> tuple[dict[str, str], dict[str, object], datetime | None]:
        """Every instance's entry name (by SOP Instance UID), each series' SeriesNumber, and the
        entries' time."""
        found = self.query.search(principal, "study", {"StudyInstanceUID": study}, limit=1).results
        study_row = found[0] if found else {}
        filters = {"StudyInstanceUID": study, **({"SeriesInstanceUID": series} if series else {})}
        series_rows = self.query.search(principal, "series", filters, study_uid=study,
                                        limit=self.query.max_limit).results
        series_numbers = {_value(row.get(SERIES_UID)): _value(row.get(SERIES_NUMBER)) for row in series_rows}
        date = _value(study_row.get(STUDY_DATE))
        top = f"{safe_part(_value(study_row.get(PATIENT_ID)), 'NOID')}/{safe_part(date, 'NODATE')}_" \
              f"{safe_part(study, 'NOUID')}"
        numbers = Counter((r.series_uid, r.instance_number) for r in records)
        folders = {uid: f"{safe_part(series_numbers.get(uid), '0')}_{safe_part(uid, 'NOUID')}"
                   for uid in dict.fromkeys(r.series_uid for r in records)}
        names: dict[str, str] = {}
        taken: set[str] = set()
        for record in self._order(records, series_numbers):  # in a stated order: the same names every time
            folder = folders[record.series_uid]
            number = record.instance_number
            unique = number is not None and numbers[record.series_uid, number] == 1
            stem = f"{number:04d}" if unique else safe_part(record.sop_uid, "NOUID")
            name = f"{top}/{folder}/{stem}.dcm"
            n = 1
            while name.casefold() in taken:  # only after sanitising could two names meet
                n += 1
                name = f"{top}/{folder}/{stem}_{n}.dcm"
            taken.add(name.casefold())
            names[record.sop_uid] = name
        return names, series_numbers, _study_time(date, _value(study_row.get(STUDY_TIME)))

    @staticmethod
    def _order(records: list[InstanceRecord], series_numbers: dict[str, object]) -> list[InstanceRecord]:
        """The whole study's (series') entries: series by SeriesNumber (those without one last),
        then Series Instance UID; instances by InstanceNumber (those without one last), then SOP
        Instance UID. Stated here, not left to the index (SQLite and PostgreSQL sort NULLs apart)."""
        def number(value: object) -> tuple[bool, float]:
            try:
                return False, float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return True, 0.0

        return sorted(records, key=lambda r: (*number(series_numbers.get(r.series_uid)), r.series_uid,
                                              r.instance_number is None, r.instance_number or 0, r.sop_uid))

    # --- CRC-32 and ETag --------------------------------------------------------------------------
    def _fill_crc32(self, entries: list[Entry]) -> None:
        """The CRC-32 of instances indexed without one: the blob read once, in chunks, and the
        value recorded in the index for the next downloads."""
        missing = [e.record for e in entries if e.record.crc32 is None]
        if missing:
            logger.info("computing the CRC-32 of %d instance(s) stored without one", len(missing))
        for record in missing:
            crc, size = 0, 0
            for chunk in self.retrieve.iter_bytes(record):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
            if size != record.size:
                logger.error("blob %s of instance %s has %d bytes, the index says %d", record.blob_key,
                             record.sop_uid, size, record.size)
                raise BackendUnavailable(f"stored file of instance {record.sop_uid} does not have the size "
                                         "the index records")
            record.crc32 = crc
            try:
                self.index.set_crc32(record.clinic_id, record.sop_uid, record.sha256, crc)
            except StorageError as exc:  # the download does not need it recorded
                logger.warning("could not record the CRC-32 of instance %s: %s", record.sop_uid, exc)

    @staticmethod
    def _etag(entries: list[Entry], date_time: tuple[int, int]) -> str:
        """Strong: the same names, bytes (sha256) and layout give the same archive, byte for byte."""
        digest = hashlib.sha256(f"{LAYOUT_VERSION}\0{date_time[0]}\0{date_time[1]}\n".encode())
        for entry in entries:
            digest.update(f"{entry.name}\0{entry.record.sha256}\0{entry.record.size}\n".encode())
        return digest.hexdigest()[:40]
