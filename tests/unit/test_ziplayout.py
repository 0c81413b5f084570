"""The stored-zip layout (gateway/services/ziplayout.py): archives Python's zipfile (and Info-ZIP's
unzip, when installed) read back byte for byte, an exact length, every byte range equal to the
slice of the whole, and ZIP64 where sizes, offsets or the entry count need it — the large cases
checked on layouts of synthetic sizes (terabytes of entries never written), read by zipfile
through a file object that makes each range on demand."""
from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
import zipfile
import zlib

import pytest

from gateway.services.ziplayout import (
    MAX16,
    MAX32,
    ArchiveSourceError,
    Member,
    StoredZip,
    dos_datetime,
)

GIB = 1 << 30


def members_of(blobs: dict[str, bytes], when=(0x5A2F, 0x4C00)) -> list[Member]:
    return [Member(name, len(data), zlib.crc32(data), name, when) for name, data in blobs.items()]


class Opener:
    """Blobs by name as seekable files; records which were opened and where they were read from."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs
        self.reads: list[tuple[str, int]] = []

    def __call__(self, name: str):
        opener = self

        class File(io.BytesIO):
            def seek(self, offset, whence=0):
                opener.reads[-1] = (name, offset)
                return super().seek(offset, whence)

        self.reads.append((name, 0))
        return File(self.blobs[name])


def sample_blobs(seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    sizes = [0, 1, 2, 29, 30, 31, 4096, 65535, 65536, 300_001, 1_500_000, 17]
    blobs = {f"P1/20240115_1.2.3/1_1.2.3.4/{i + 1:04d}.dcm": rng.randbytes(n) for i, n in enumerate(sizes)}
    blobs["Kim^Ji-woo 김지우/NODATE_1.2/0_1.2.9/1.2.9.1.dcm"] = b"DICM" * 100  # a UTF-8 name
    return blobs


def whole(layout: StoredZip) -> bytes:
    return b"".join(layout.iter_bytes())


def check_readable(data: bytes, blobs: dict[str, bytes]) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.namelist() == list(blobs)
    assert archive.testzip() is None
    for name, blob in blobs.items():
        info = archive.getinfo(name)
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.file_size == info.compress_size == len(blob)
        assert archive.read(name) == blob
    return archive


# --- small archives, read for real --------------------------------------------------------------

def test_zipfile_reads_every_entry_back():
    blobs = sample_blobs()
    layout = StoredZip(members_of(blobs), Opener(blobs))
    data = whole(layout)
    assert len(data) == layout.length
    archive = check_readable(data, blobs)
    assert not layout.zip64
    info = archive.getinfo("Kim^Ji-woo 김지우/NODATE_1.2/0_1.2.9/1.2.9.1.dcm")
    assert info.flag_bits & 0x800  # UTF-8 name
    assert archive.getinfo(next(iter(blobs))).flag_bits & 0x800 == 0
    assert info.date_time == (2025, 1, 15, 9, 32, 0)
    assert info.external_attr >> 16 == 0o100644
    assert data[-22:-18] == b"PK\x05\x06" and b"PK\x06\x06" not in data[layout.cd_offset:]


def test_no_data_descriptor_and_crc_in_every_local_header():
    blobs = sample_blobs()
    layout = StoredZip(members_of(blobs), Opener(blobs))
    data = whole(layout)
    for i, (name, blob) in enumerate(blobs.items()):
        start, data_start, end = layout.entry_offsets(i)
        sig, version, flags, method, _t, _d, crc, csize, usize, nlen, xlen = struct.unpack_from(
            "<IHHHHHIIIHH", data, start)
        assert (sig, method, flags & 0x8) == (0x04034B50, 0, 0)
        assert (crc, csize, usize, version) == (zlib.crc32(blob), len(blob), len(blob), 20)
        assert data[start + 30:start + 30 + nlen].decode() == name and xlen == 0
        assert data[data_start:end] == blob


def test_the_archive_is_the_same_bytes_every_time():
    blobs = sample_blobs()
    first = whole(StoredZip(members_of(blobs), Opener(blobs)))
    assert whole(StoredZip(members_of(blobs), Opener(blobs))) == first


def boundaries(layout: StoredZip) -> set[int]:
    points = {0, layout.cd_offset, layout.end_offset, layout.length}
    for i in range(len(layout.entries)):
        points.update(layout.entry_offsets(i))
        points.add(layout.cd_offset + layout._cd_starts[i])
    if layout.zip64_end:
        points.add(layout.end_offset + 56)
        points.add(layout.end_offset + 76)
    return points


def test_every_byte_range_is_the_slice_of_the_whole():
    blobs = sample_blobs()
    opener = Opener(blobs)
    layout = StoredZip(members_of(blobs), opener, read_chunk=7000)
    data = whole(layout)
    rng = random.Random(7)
    points = sorted(p + d for p in boundaries(layout) for d in (-31, -1, 0, 1, 2, 45)
                    if 0 <= p + d <= layout.length)
    ranges = [(a, b) for a in points for b in rng.sample(points, 6) if a <= b]
    ranges += [(a, min(layout.length, a + n)) for a in rng.sample(range(layout.length), 300) for n in (1, 5, 100_000)]
    ranges += [(0, layout.length), (layout.length, layout.length), (layout.length - 1, layout.length)]
    for start, stop in ranges:
        assert b"".join(layout.iter_bytes(start, stop)) == data[start:stop], (start, stop)


def test_a_range_reads_only_the_blobs_it_covers_from_its_offset():
    blobs = sample_blobs()
    opener = Opener(blobs)
    layout = StoredZip(members_of(blobs), opener)
    names = list(blobs)
    big = names.index("P1/20240115_1.2.3/1_1.2.3.4/0011.dcm")
    _start, data_start, end = layout.entry_offsets(big)
    assert len(b"".join(layout.iter_bytes(data_start + 1_000_000, end - 10))) == 1_500_000 - 1_000_010
    assert opener.reads == [(names[big], 1_000_000)]
    opener.reads.clear()
    b"".join(layout.iter_bytes(layout.cd_offset))  # the central directory and the end: no blob
    assert opener.reads == []
    header_only = layout.entry_offsets(big)
    b"".join(layout.iter_bytes(header_only[0], header_only[1]))
    assert opener.reads == []


def test_a_short_blob_stops_the_archive():
    blobs = {"a.dcm": b"x" * 1000}
    layout = StoredZip([Member("a.dcm", 2000, 0, "a.dcm")], Opener(blobs))
    with pytest.raises(ArchiveSourceError, match="ended 1000 bytes before the 2000"):
        b"".join(layout.iter_bytes())


def test_forced_zip64_is_read_by_zipfile():
    blobs = sample_blobs(2)
    layout = StoredZip(members_of(blobs), Opener(blobs), force_zip64=True)
    data = whole(layout)
    assert len(data) == layout.length and layout.zip64 and layout.zip64_end
    archive = check_readable(data, blobs)
    for i, info in enumerate(archive.infolist()):
        tag, size, usize, csize, offset = struct.unpack_from("<HHQQQ", info.extra)
        assert (tag, size) == (1, 24) and usize == csize == info.file_size
        assert offset == info.header_offset == layout.entry_offsets(i)[0]
        start = layout.entry_offsets(i)[0]
        assert struct.unpack_from("<HII", data, start + 4)[0] == 45  # version needed 4.5
        assert struct.unpack_from("<II", data, start + 18) == (MAX32, MAX32)  # sizes: see the extra field
    end = data[layout.end_offset:]
    assert end[:4] == b"PK\x06\x06" and end[56:60] == b"PK\x06\x07" and end[76:80] == b"PK\x05\x06"
    count, total, cd_size, cd_offset = struct.unpack_from("<QQQQ", end, 24)
    assert (count, total, cd_size, cd_offset) == (len(blobs), len(blobs), layout.cd_size, layout.cd_offset)
    # the locator points at the ZIP64 end record
    assert struct.unpack_from("<IIQI", end, 56)[1:] == (0, layout.end_offset, 1)


def test_65535_entries_get_the_zip64_end_records():
    assert not StoredZip([Member(f"{i}.dcm", 1, 0) for i in range(MAX16 - 1)]).zip64_end
    blobs = {f"S/{i:05d}.dcm": bytes([i % 251]) for i in range(MAX16)}
    layout = StoredZip(members_of(blobs), Opener(blobs))
    assert layout.zip64_end and not any(e.zip64_sizes or e.zip64_offset for e in layout.entries)
    data = whole(layout)
    assert len(data) == layout.length
    end = data[-22:]
    assert struct.unpack_from("<HH", end, 8) == (MAX16, MAX16)  # "see the ZIP64 end record"
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert len(archive.infolist()) == MAX16
    assert archive.testzip() is None
    assert archive.read("S/65534.dcm") == bytes([65534 % 251])


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip is not installed")
@pytest.mark.parametrize("force", [False, True])
def test_info_zip_unzip_tests_it(tmp_path, force):
    blobs = sample_blobs(3)
    path = tmp_path / "a.zip"
    path.write_bytes(whole(StoredZip(members_of(blobs), Opener(blobs), force_zip64=force)))
    run = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "No errors detected" in run.stdout, run.stdout + run.stderr


# --- large archives, laid out but never written ---------------------------------------------------

class Pattern(io.RawIOBase):
    """A blob of ``size`` bytes whose byte at offset k is (k + seed) % 256, made on demand."""

    CYCLE = bytes(range(256)) * 2

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.position = size, seed, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        self.position = offset if whence == 0 else self.position + offset if whence == 1 else self.size + offset
        return self.position

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self.size - self.position))
        out = bytearray()
        while len(out) < n:
            start = (self.position + len(out) + self.seed) % 256
            out += self.CYCLE[start:start + min(256, n - len(out))]
        buffer[:n] = out
        self.position += n
        return n

    @staticmethod
    def expected(seed: int, start: int, stop: int) -> bytes:
        return bytes((k + seed) % 256 for k in range(start, stop))


class LayoutFile(io.RawIOBase):
    """A StoredZip as a seekable file: each read makes just that range (zipfile reads the end,
    the central directory, then one local header and its data)."""

    def __init__(self, layout: StoredZip):
        self.layout, self.position = layout, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.position

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self.position, 2: self.layout.length}[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer):
        stop = min(self.layout.length, self.position + len(buffer))
        data = b"".join(self.layout.iter_bytes(self.position, stop)) if stop > self.position else b""
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def crc_of(size: int, seed: int) -> int:
    """The true CRC-32 of small pattern blobs (zipfile checks it when it reads one to its end); a
    stand-in for the big ones, which are never read whole."""
    return zlib.crc32(Pattern.expected(seed, 0, size)) if size < 1_000_000 else 0x1234 + seed


def huge_layout(sizes: list[int]) -> StoredZip:
    members = [Member(f"P/S/{i + 1:04d}.dcm", size, crc_of(size, i), (size, i)) for i, size in enumerate(sizes)]
    return StoredZip(members, lambda source: Pattern(*source))


def test_an_entry_of_4_gib_gets_zip64_sizes_in_both_headers():
    layout = huge_layout([MAX32 - 200, MAX32, 5 * GIB, 100])
    first, second, third, last = layout.entries
    assert StoredZip([Member("a", MAX32 - 1, 0)]).entries[0].zip64_sizes is False
    assert not first.zip64_sizes and second.zip64_sizes and third.zip64_sizes and not last.zip64_sizes
    assert not first.zip64_offset and not second.zip64_offset  # 0 and just under 4 GiB
    assert third.zip64_offset and last.zip64_offset  # local headers beyond 4 GiB
    local = second.local_header()
    assert struct.unpack_from("<II", local, 18) == (MAX32, MAX32)
    assert struct.unpack_from("<HHQQ", local, 30 + len(second.name)) == (1, 16, MAX32, MAX32)
    assert layout.zip64_end  # the central directory starts beyond 4 GiB
    assert len(first.local_header()) == 30 + len(first.name)


def test_zipfile_reads_the_central_directory_of_a_14_gib_archive_made_on_demand():
    sizes = [5 * GIB, 100, 4 * GIB + 7, 1000]
    layout = huge_layout(sizes)
    assert layout.length > 9 * GIB and layout.cd_offset > MAX32
    archive = zipfile.ZipFile(LayoutFile(layout))
    infos = archive.infolist()
    assert [i.file_size for i in infos] == sizes
    assert [i.header_offset for i in infos] == [layout.entry_offsets(n)[0] for n in range(4)]
    assert [i.CRC for i in infos] == [crc_of(size, n) for n, size in enumerate(sizes)]
    assert infos[3].header_offset > 9 * GIB
    with archive.open(infos[1]) as member:  # after the 5 GiB entry
        assert member.read() == Pattern.expected(1, 0, 100)
    with archive.open(infos[3]) as member:
        assert member.read(300) == Pattern.expected(3, 0, 300)
    # the bytes of any range inside the big entries, straight from the layout
    _start, data_start, end = layout.entry_offsets(0)
    assert b"".join(layout.iter_bytes(end - 100, end + 10))[:100] == Pattern.expected(0, 5 * GIB - 100, 5 * GIB)
    assert b"".join(layout.iter_bytes(data_start + 3 * GIB, data_start + 3 * GIB + 50)) == Pattern.expected(
        0, 3 * GIB, 3 * GIB + 50)


def test_end_records_of_a_central_directory_beyond_4_gib():
    layout = huge_layout([MAX32 + 10, 1])
    end = b"".join(layout.iter_bytes(layout.end_offset))
    assert end[:4] == b"PK\x06\x06"
    assert struct.unpack_from("<QQQQ", end, 24) == (2, 2, layout.cd_size, layout.cd_offset)
    classic = end[76:]
    assert struct.unpack_from("<IHHHHII", classic) == (0x06054B50, 0, 0, 2, 2, layout.cd_size, MAX32)
    central = b"".join(layout.iter_bytes(layout.cd_offset, layout.end_offset))
    # the second entry: its offset (beyond 4 GiB) in the extra field, its sizes in the header
    second = central[layout._cd_starts[1]:]
    csize, usize = struct.unpack_from("<II", second, 20)
    offset_field = struct.unpack_from("<I", second, 42)[0]
    assert (csize, usize, offset_field) == (1, 1, MAX32)
    name_len, extra_len = struct.unpack_from("<HH", second, 28)
    assert struct.unpack_from("<HHQ", second, 46 + name_len) == (1, 8, layout.entry_offsets(1)[0])
    assert extra_len == 12


def test_length_is_computed_without_reading():
    layout = huge_layout([2 * GIB] * 1000)  # 2 TB
    assert layout.length == sum(e.local_length + e.member.size for e in layout.entries) + layout.cd_size + len(
        layout.end_records)
    assert layout.length > 2000 * GIB


def test_dos_datetime():
    from datetime import datetime

    assert dos_datetime(None) == (33, 0)
    assert dos_datetime(datetime(1979, 12, 31)) == (33, 0)
    assert dos_datetime(datetime(2024, 1, 15, 9, 30, 59)) == ((44 << 9) | (1 << 5) | 15, (9 << 11) | (30 << 5) | 29)
