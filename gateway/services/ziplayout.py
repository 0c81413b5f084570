"""The byte layout of a stored (uncompressed) zip archive whose entries are blobs, so that any
byte range of it can be produced without producing what comes before it.

Why not a library: the zip writers (``zipfile``, ``stream-zip``) produce an archive from the
first byte to the last; none can answer "bytes 3,000,000,000 to 3,100,000,000" of an archive
it streams from blobs without generating (and reading) everything before them. A resumed
download and parallel ranged downloads need exactly that. For *stored* entries whose sizes
and CRC-32s are known in advance, every byte of the archive is a function of those numbers:
this module computes where each local header, each entry's data, the central directory and
the end records go, and produces any range of it, reading only the blob bytes inside the
range (``open`` gives a seekable file per entry; the read starts at the offset).

Format (APPNOTE.TXT 6.3.10): per entry a local file header (version needed 2.0, or 4.5
with ZIP64; general purpose flag bit 11 for UTF-8 names; method 0; the CRC-32 and the
sizes in the header, so no data descriptor), the data unchanged; then the central
directory (made by UNIX 4.5, mode 0644) and the end of central directory record. ZIP64
where needed, and only there: an entry of 0xFFFFFFFF bytes or more gets the ZIP64 extra
field with both sizes in its local header and its sizes in its central header's extra; an
entry whose local header starts at or beyond 0xFFFFFFFF gets its offset in the central
header's extra; 0xFFFF entries or more, or a central directory that starts (or is) beyond
0xFFFFFFFF, adds the ZIP64 end of central directory record and its locator before the
classic end record (whose fields that do not fit hold 0xFFFF / 0xFFFFFFFF).
``force_zip64`` writes every ZIP64 structure for every entry (tests, and readers that
want it). The deflated variant of the download is ``stream-zip``'s (no ranges there).

Memory: a few integers and the name per entry; header bytes are made when a range needs
them, blobs are read in chunks.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Callable, Iterator, Sequence

LOCAL_SIGNATURE = 0x04034B50
CENTRAL_SIGNATURE = 0x02014B50
END_SIGNATURE = 0x06054B50
ZIP64_END_SIGNATURE = 0x06064B50
ZIP64_LOCATOR_SIGNATURE = 0x07064B50
ZIP64_EXTRA_ID = 0x0001

MAX32 = 0xFFFFFFFF  # a 4-byte field holding this value means "see the ZIP64 extra field"
MAX16 = 0xFFFF
VERSION_DEFAULT = 20  # 2.0: stored entries, folders
VERSION_ZIP64 = 45  # 4.5
MADE_BY_UNIX = 3 << 8
UTF8_FLAG = 0x0800
EXTERNAL_ATTRIBUTES = (0o100644 << 16)  # a regular file, rw-r--r--

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_END = struct.Struct("<IHHHHIIH")  # 22 bytes
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_ZIP64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes

READ_CHUNK = 1024 * 1024
COALESCE = 64 * 1024  # headers and small entries are sent in pieces of at least this size


class ArchiveSourceError(Exception):
    """A blob gave fewer bytes than its entry announces: the archive cannot be completed (the
    response is cut short, so the client sees a body shorter than its Content-Length)."""


def dos_datetime(when: datetime | None) -> tuple[int, int]:
    """(date, time) in MS-DOS format; outside 1980-2107 (or None): 1980-01-01 00:00."""
    if when is None or not 1980 <= when.year <= 2107:
        return (1 << 5) | 1, 0
    return (((when.year - 1980) << 9) | (when.month << 5) | when.day,
            (when.hour << 11) | (when.minute << 5) | (when.second // 2))


@dataclass(frozen=True)
class Member:
    """One entry: its name in the archive, its bytes' size and CRC-32, and what ``open`` takes
    to read them."""

    name: str
    size: int
    crc32: int
    source: Any = None
    modified: tuple[int, int] = (33, 0)  # MS-DOS (date, time), see dos_datetime


class _Entry:
    __slots__ = ("member", "name", "offset", "local_length", "zip64_sizes", "zip64_offset")

    def __init__(self, member: Member, offset: int, force_zip64: bool):
        self.member = member
        self.name = member.name.encode("utf-8")
        if len(self.name) > MAX16:
            raise ValueError(f"entry name longer than {MAX16} bytes: {member.name[:80]}...")
        if member.size < 0 or not 0 <= member.crc32 <= MAX32:
            raise ValueError(f"entry {member.name}: bad size {member.size} or CRC-32 {member.crc32}")
        self.offset = offset
        self.zip64_sizes = force_zip64 or member.size >= MAX32
        self.zip64_offset = force_zip64 or offset >= MAX32
        self.local_length = _LOCAL.size + len(self.name) + (20 if self.zip64_sizes else 0)

    @property
    def flags(self) -> int:
        return UTF8_FLAG if not self.member.name.isascii() else 0

    @property
    def data_offset(self) -> int:
        return self.offset + self.local_length

    @property
    def end(self) -> int:
        return self.data_offset + self.member.size

    def central_extra(self) -> bytes:
        values = ([self.member.size, self.member.size] if self.zip64_sizes else []) + (
            [self.offset] if self.zip64_offset else [])
        if not values:
            return b""
        return struct.pack(f"<HH{len(values)}Q", ZIP64_EXTRA_ID, 8 * len(values), *values)

    @property
    def central_length(self) -> int:
        fields = (2 if self.zip64_sizes else 0) + (1 if self.zip64_offset else 0)
        return _CENTRAL.size + len(self.name) + (4 + 8 * fields if fields else 0)

    def local_header(self) -> bytes:
        m = self.member
        if self.zip64_sizes:
            extra = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, m.size, m.size)
            sizes, version = (MAX32, MAX32), VERSION_ZIP64
        else:
            extra, sizes, version = b"", (m.size, m.size), VERSION_DEFAULT
        date, time = m.modified
        return _LOCAL.pack(LOCAL_SIGNATURE, version, self.flags, 0, time, date, m.crc32, *sizes,
                           len(self.name), len(extra)) + self.name + extra

    def central_header(self) -> bytes:
        m = self.member
        extra = self.central_extra()
        version = VERSION_ZIP64 if extra else VERSION_DEFAULT
        size = MAX32 if self.zip64_sizes else m.size
        offset = MAX32 if self.zip64_offset else self.offset
        date, time = m.modified
        return _CENTRAL.pack(CENTRAL_SIGNATURE, MADE_BY_UNIX | version, version, self.flags, 0, time, date,
                             m.crc32, size, size, len(self.name), len(extra), 0, 0, 0, EXTERNAL_ATTRIBUTES,
                             offset) + self.name + extra


class StoredZip:
    """The layout of a stored zip of ``members``, in that order. :attr:`length` is the exact
    size of the archive; :meth:`iter_bytes` produces any range of it, opening (``open(source)``,
    a seekable binary file) only the entries the range covers, at the offset it needs."""

    def __init__(self, members: Sequence[Member], open: Callable[[Any], BinaryIO] | None = None, *,
                 force_zip64: bool = False, comment: bytes = b"", read_chunk: int = READ_CHUNK):
        if len(comment) > MAX16:
            raise ValueError("archive comment too long")
        self._open = open
        self.read_chunk = read_chunk
        self.comment = comment
        self.entries: list[_Entry] = []
        offset = 0
        for member in members:
            entry = _Entry(member, offset, force_zip64)
            self.entries.append(entry)
            offset = entry.end
        self._starts = [e.offset for e in self.entries]
        self.cd_offset = offset
        self._cd_starts: list[int] = []  # offset of each central header within the central directory
        for entry in self.entries:
            self._cd_starts.append(offset - self.cd_offset)
            offset += entry.central_length
        self.cd_size = offset - self.cd_offset
        count = len(self.entries)
        self.zip64_end = force_zip64 or count >= MAX16 or self.cd_offset >= MAX32 or self.cd_size >= MAX32
        self.end_offset = offset  # of the end records
        self.end_records = self._end_records()
        self.length = self.end_offset + len(self.end_records)

    @property
    def zip64(self) -> bool:
        """Whether any ZIP64 structure is in the archive."""
        return self.zip64_end or any(e.zip64_sizes or e.zip64_offset for e in self.entries)

    def _end_records(self) -> bytes:
        count = len(self.entries)
        out = b""
        if self.zip64_end:
            out += _ZIP64_END.pack(ZIP64_END_SIGNATURE, _ZIP64_END.size - 12, MADE_BY_UNIX | VERSION_ZIP64,
                                   VERSION_ZIP64, 0, 0, count, count, self.cd_size, self.cd_offset)
            out += _ZIP64_LOCATOR.pack(ZIP64_LOCATOR_SIGNATURE, 0, self.end_offset, 1)
        out += _END.pack(END_SIGNATURE, 0, 0, min(count, MAX16), min(count, MAX16), min(self.cd_size, MAX32),
                         min(self.cd_offset, MAX32), len(self.comment)) + self.comment
        return out

    # --- producing bytes --------------------------------------------------------------------
    def iter_bytes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The archive's bytes ``[start, stop)`` in chunks (small pieces joined up to 64 KiB,
        blob reads of ``read_chunk``)."""
        stop = self.length if stop is None else min(stop, self.length)
        if not 0 <= start <= stop:
            raise ValueError(f"bad range {start}-{stop} of {self.length}")
        pending = bytearray()
        for piece in self._pieces(start, stop):
            if len(piece) >= COALESCE:
                if pending:
                    yield bytes(pending)
                    pending.clear()
                yield piece
                continue
            pending += piece
            if len(pending) >= COALESCE:
                yield bytes(pending)
                pending.clear()
        if pending:
            yield bytes(pending)

    def _pieces(self, start: int, stop: int) -> Iterator[bytes]:
        position = start
        if position < self.cd_offset:
            i = bisect.bisect_right(self._starts, position) - 1
            while i < len(self.entries) and position < min(stop, self.cd_offset):
                entry = self.entries[i]
                if position < entry.data_offset:
                    header = entry.local_header()
                    piece = header[position - entry.offset:min(stop, entry.data_offset) - entry.offset]
                    yield piece
                    position += len(piece)
                if position < stop and position < entry.end:
                    length = min(stop, entry.end) - position
                    yield from self._read(entry, position - entry.data_offset, length)
                    position += length
                i += 1
        if position < stop and position < self.end_offset:
            i = bisect.bisect_right(self._cd_starts, position - self.cd_offset) - 1
            while i < len(self.entries) and position < min(stop, self.end_offset):
                header_start = self.cd_offset + self._cd_starts[i]
                header = self.entries[i].central_header()
                piece = header[position - header_start:stop - header_start]
                yield piece
                position += len(piece)
                i += 1
        if position < stop:
            yield self.end_records[position - self.end_offset:stop - self.end_offset]

    def _read(self, entry: _Entry, offset: int, length: int) -> Iterator[bytes]:
        if self._open is None:
            raise ValueError("this layout has no way to open its entries")
        fh = self._open(entry.member.source)
        try:
            if offset:
                fh.seek(offset)
            remaining = length
            while remaining:
                chunk = fh.read(min(self.read_chunk, remaining))
                if not chunk:
                    raise ArchiveSourceError(f"entry {entry.member.name}: its stored file ended {remaining} bytes "
                                             f"before the {entry.member.size} announced")
                remaining -= len(chunk)
                yield chunk
        finally:
            fh.close()

    # --- what tests and callers look at ------------------------------------------------------
    def entry_offsets(self, index: int) -> tuple[int, int, int]:
        """(local header offset, data offset, end of data) of entry ``index``."""
        entry = self.entries[index]
        return entry.offset, entry.data_offset, entry.end
