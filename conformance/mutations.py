"""Malformed inputs for the fuzz run, each made from a seeded ``random.Random``: Part 10 files
mutated at the byte level (bits, VRs, lengths, stray delimiters, nesting, truncation),
multipart bodies broken at the framing level, chunked transfer framing that lies, and odd
QIDO/WADO requests. Everything is a pure function of the generator, so a case is replayed
from its seed and number alone.

The mutators work on the raw bytes of Explicit VR Little Endian files: :func:`elements` walks
the top-level data set (after the file meta group) to find where each element's tag, VR,
length and value are, so that a mutation can hit exactly one field of one element.
"""
from __future__ import annotations

import io
import random
import string
import struct
from dataclasses import dataclass
from typing import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# The files pydicom ships that cover the shapes a server parses: native CT and MR, RGB
# secondary capture, nested sequences (RT plan), encapsulated JPEG 2000 and RLE, a structured
# report; those missing from an installation are left out.
SOURCES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "rtplan.dcm", "JPEG2000.dcm",
           "emri_small_RLE.dcm", "MR_small_RLE.dcm", "SC_rgb_small_odd.dcm")
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL",
       "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")
DELIMITERS = (0xE000, 0xE00D, 0xE0DD)  # item, item delimitation, sequence delimitation (FFFE,xxxx)


@dataclass(frozen=True)
class Element:
    offset: int  # of its tag
    tag: int
    vr: bytes
    length_at: int  # offset of its length field
    length_size: int  # 2 or 4
    value_at: int
    length: int


def source_files() -> list[tuple[str, bytes]]:
    """(name, Part 10 bytes in Explicit VR Little Endian unless compressed) of the sources."""
    from pydicom.data import get_testdata_file

    found = []
    for name in SOURCES:
        path = get_testdata_file(name, download=False)
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_implicit_VR or not ds.file_meta.TransferSyntaxUID.is_little_endian:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        found.append((name, write(ds)))
    return found


def write(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(out, enforce_file_format=True, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian)
    return out.getvalue()


def renamed(data: bytes, study: str) -> tuple[bytes, str]:
    """The file under ``study``, a new series and a new SOP Instance UID (its UID returned)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return write(ds), ds.SOPInstanceUID


def dataset_start(data: bytes) -> int:
    offset = 132
    while offset + 8 <= len(data) and int.from_bytes(data[offset:offset + 2], "little") == 0x0002:
        vr = data[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            offset += 12 + int.from_bytes(data[offset + 8:offset + 12], "little")
        else:
            offset += 8 + int.from_bytes(data[offset + 6:offset + 8], "little")
    return offset


def elements(data: bytes) -> list[Element]:
    """The top-level elements of the data set, up to (not into) the pixel data."""
    found = []
    offset = dataset_start(data)
    while offset + 8 <= len(data):
        group, number = struct.unpack_from("<HH", data, offset)
        tag = group << 16 | number
        vr = data[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            length_at, size = offset + 8, 4
        else:
            length_at, size = offset + 6, 2
        if length_at + size > len(data):
            break
        length = int.from_bytes(data[length_at:length_at + size], "little")
        value_at = length_at + size
        found.append(Element(offset, tag, vr, length_at, size, value_at, length))
        if tag >= 0x7FE00000 or length == 0xFFFFFFFF:
            break  # pixel data, or an undefined length whose end needs parsing
        offset = value_at + length
    return found


# --- Part 10 mutators: (rng, data, elements) -> data --------------------------------------------

def _pick(rng: random.Random, found: list[Element]) -> Element | None:
    return rng.choice(found) if found else None


def unknown_vr(rng, data, found):
    e = _pick(rng, found)
    if e is None:
        return data
    vr = "".join(rng.choice(string.ascii_uppercase) for _ in range(2)).encode()
    return data[:e.offset + 4] + vr + data[e.offset + 6:]


def other_vr(rng, data, found):
    """A valid VR that does not fit the value (PlanarConfiguration as FD)."""
    e = _pick(rng, [x for x in found if x.length_size == 2])
    if e is None:
        return data
    vr = rng.choice([v for v in VRS if v.encode() not in _LONG_VRS]).encode()
    return data[:e.offset + 4] + vr + data[e.offset + 6:]


def bad_length(rng, data, found):
    e = _pick(rng, found)
    if e is None:
        return data
    choice = rng.choice(["odd", "short", "long", "huge", "zero"])
    length = {"odd": e.length | 1, "short": max(0, e.length - rng.randint(1, 8)),
              "long": e.length + rng.randint(1, 64), "huge": (1 << (8 * e.length_size)) - 2, "zero": 0}[choice]
    length = min(length, (1 << (8 * e.length_size)) - 1)
    return data[:e.length_at] + length.to_bytes(e.length_size, "little") + data[e.length_at + e.length_size:]


def stray_delimiter(rng, data, found):
    e = _pick(rng, found)
    at = e.offset if e is not None else dataset_start(data)
    item = struct.pack("<HHI", 0xFFFE, rng.choice(DELIMITERS), rng.choice([0, 0, 4, 0xFFFFFFFF]))
    return data[:at] + item + data[at:]


def flip_bits(rng, data, found):
    start = dataset_start(data)
    end = found[-1].value_at if found else len(data)
    if end <= start:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(start, end)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def garbage(rng, data, found):
    start = min(dataset_start(data), len(data))
    i = rng.randrange(start, len(data)) if len(data) > start else len(data)
    n = rng.randint(1, 64)
    return data[:i] + rng.randbytes(n) + data[i + n:]


def truncate(rng, data, found):
    return data[:rng.randrange(0, len(data))] if data else data


def duplicate_element(rng, data, found):
    e = _pick(rng, found[:-1])
    if e is None:
        return data
    end = e.value_at + e.length
    return data[:end] + data[e.offset:end] + data[end:]


def deep_nesting(rng, data, found):
    """ContentSequence items nested far deeper than any real object (a parser that recurses
    per level), written as bytes: undefined lengths, placed in tag order."""
    depth = rng.choice([40, 200, 2000])
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                          0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    inner = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"X "
    nested = opening * depth + inner + closing * depth
    at = next((e.offset for e in found if e.tag > 0x0040A730), found[-1].offset if found else len(data))
    return data[:at] + nested + data[at:]


MUTATORS: dict[str, Callable] = {
    "unknown-vr": unknown_vr, "other-vr": other_vr, "bad-length": bad_length,
    "stray-delimiter": stray_delimiter, "flip-bits": flip_bits, "garbage": garbage,
    "truncate": truncate, "duplicate-element": duplicate_element, "deep-nesting": deep_nesting,
}
_WEIGHTS = {"deep-nesting": 0.2, "truncate": 0.6}


def mutate(rng: random.Random, data: bytes) -> tuple[bytes, list[str]]:
    """``data`` with one to three mutations, and their names."""
    names = rng.choices(list(MUTATORS), weights=[_WEIGHTS.get(n, 1.0) for n in MUTATORS], k=rng.randint(1, 3))
    for name in names:
        data = MUTATORS[name](rng, data, elements(data))
    return data, names


# --- HTTP bodies ----------------------------------------------------------------------------

def multipart(parts: list[bytes], boundary: str) -> bytes:
    out = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                   for p in parts)
    return out + b"--" + boundary.encode() + b"--\r\n"


def break_multipart(rng: random.Random, body: bytes, boundary: str) -> tuple[bytes, str]:
    """A framing fault of a multipart body, and its name."""
    delim = b"--" + boundary.encode()
    starts = [i for i in range(len(body)) if body.startswith(delim, i)] or [0]
    kind = rng.choice(["cut", "no-close", "bad-boundary", "header-garbage", "no-header-end",
                       "empty-parts", "long-header", "preamble-junk"])
    if kind == "cut":
        return body[:rng.randrange(len(body))], kind
    if kind == "no-close":
        return body[:starts[-1]], kind
    if kind == "bad-boundary":
        i = rng.choice(starts)
        return body[:i + 2] + b"X" + body[i + 3:], kind
    if kind == "header-garbage":
        i = rng.choice(starts) + len(delim) + 2
        return body[:i] + rng.randbytes(rng.randint(1, 40)) + b"\r\n" + body[i:], kind
    if kind == "no-header-end":
        return body.replace(b"application/dicom\r\n\r\n", b"application/dicom\r\n", 1), kind
    if kind == "empty-parts":
        return multipart([b""] * rng.randint(1, 3000), boundary), kind
    if kind == "long-header":
        i = starts[0] + len(delim) + 2
        return body[:i] + b"X-Long: " + b"a" * rng.randint(16_000, 70_000) + b"\r\n" + body[i:], kind
    return rng.randbytes(rng.randint(1, 2000)).replace(delim, b"") + b"\r\n" + body, kind


def chunked(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """``body`` in chunked transfer coding, with one framing fault (or none), and its name."""
    pieces, i = [], 0
    while i < len(body):
        n = rng.randint(1, 64 * 1024)
        pieces.append(body[i:i + n])
        i += n
    out = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces]
    kind = rng.choice(["none", "not-hex", "size-too-small", "size-too-large", "no-crlf", "extension",
                       "no-last-chunk", "negative"])
    j = rng.randrange(len(out)) if out else 0
    if out and kind == "not-hex":
        out[j] = b"zz" + out[j][out[j].index(b"\r\n"):]
    elif out and kind == "size-too-small":
        p = pieces[j]
        out[j] = b"%x\r\n%s\r\n" % (max(0, len(p) - rng.randint(1, 10)), p)
    elif out and kind == "size-too-large":
        out[j] = b"%x\r\n%s\r\n" % (len(pieces[j]) + rng.randint(1, 10), pieces[j])
    elif out and kind == "no-crlf":
        out[j] = out[j][:-2]
    elif out and kind == "extension":
        out[j] = out[j].replace(b"\r\n", b";\x00bad=\r\n", 1)
    elif out and kind == "negative":
        out[j] = b"-5" + out[j][out[j].index(b"\r\n"):]
    tail = b"" if kind == "no-last-chunk" else b"0\r\n\r\n"
    return b"".join(out) + tail, kind


# --- QIDO / WADO requests -------------------------------------------------------------------

_QIDO_KEYS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "ModalitiesInStudy", "AccessionNumber",
              "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "limit", "offset", "fuzzymatching",
              "includefield", "00100010", "0020000D", "00080020", "Modality", "InstanceNumber", "BadKey")
_ODD_VALUES = ("%FF%FE", "%C3%28", "%00", "a%0Db", "*", "?", "**", "%25", "_", "-", "20240101-", "-20240101",
               "2024-13-45", "99999999999999999999", "-1", "1e9", "true", "1.2.3..4", "1." * 40,
               "%E2%82%AC", "\\", "^^^^", "=", "&", "%2F..%2F", "\u00e9")


def qido_target(rng: random.Random, study: str) -> str:
    """A QIDO request target (path and query), percent-encoded but with odd values."""
    path = rng.choice(["/studies", "/series", "/instances", f"/studies/{study}/series",
                       f"/studies/{study}/instances", "/studies/%FF/series"])
    pairs = []
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(_QIDO_KEYS)
        value = rng.choice(_ODD_VALUES) if rng.random() < 0.7 else "x" * rng.randint(0, 5000)
        pairs.append(f"{key}={value}")
    return path + ("?" + "&".join(pairs) if pairs else "")


def raw_request_line(rng: random.Random) -> bytes:
    """A request line a client library would not send: raw invalid UTF-8, control bytes."""
    junk = rng.choice([b"\xff\xfe", b"a\x01b", b"\x00", b"\x7f", b"a b", b"\xc3\x28", b"%", b"\r"])
    return b"GET /dicom-web/studies?PatientName=" + junk + b" HTTP/1.1\r\n"


def wado_target(rng: random.Random, study: str, series: str, sop: str) -> tuple[str, dict[str, str]]:
    """A WADO-RS request target with odd parts, and the Accept header to send."""
    frames = rng.choice(["1", "0", "-1", "1,1", "a", "1,,2", "99999", "1-3", "%FF", ""])
    path = rng.choice([
        f"/studies/{study}", f"/studies/{study}/series/{series}", f"/studies/{study}/series/{series}/metadata",
        f"/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
        f"/studies/{study}/series/{series}/instances/{sop}/rendered",
        f"/studies/{study}/series/{series}/instances/{sop}/bulk/{rng.choice(['7FE00010', 'ZZZZ', '00081140/0/x', '0'])}",
        f"/studies/{rng.choice(['1..2', 'x', '%00', '1.' * 40])}/metadata",
    ])
    accept = rng.choice(["*/*", "application/dicom", 'multipart/related; type="application/dicom"',
                         'multipart/related; type="application/octet-stream"; transfer-syntax=9.9',
                         "image/jpeg", "text/html", ";;;", "application/dicom+json", "image/png; q=x"])
    return path, {"Accept": accept}
