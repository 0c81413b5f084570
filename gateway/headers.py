"""Reading a stored instance's header: validation, index attributes and DICOM JSON.

Only the header is parsed (``stop_before_pixels``); pixel data is located by
:mod:`gateway.imaging.pixeldata` without being read.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID

from gateway.errors import DatasetMismatch, InvalidDicom, MissingAttribute
from storage.attributes import COMPUTED, INDEXED, SERIES_LEVEL_TAGS, STUDY_LEVEL_TAGS

logger = logging.getLogger(__name__)

# Replaced by the request's DICOMweb base URL when headers are served.
BASE_PLACEHOLDER = "%%DICOMWEB_BASE%%"
BULK_DATA_THRESHOLD = 1024
_BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PIXEL_DATA_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


@dataclass
class Header:
    dataset: Dataset
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str


def read_header(fp: BinaryIO, *, strict: bool = False) -> Dataset:
    """Parse a Part 10 header, raising :class:`InvalidDicom` with the cause. ``strict`` (ingest:
    the file is local and not stored yet) also refuses what pydicom reads past quietly: item
    tags outside any sequence, and a data set that ends before the pixel data."""
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise InvalidDicom(f"not a DICOM Part 10 file: {exc}") from None
    except RecursionError:  # pydicom reads nested sequences recursively
        raise InvalidDicom("sequences are nested too deeply to be parsed") from None
    except Exception as exc:  # pydicom raises many types (struct.error, BytesLengthException...)
        raise InvalidDicom(f"DICOM header cannot be parsed: {exc}") from None
    if "TransferSyntaxUID" not in ds.file_meta:
        raise MissingAttribute("file meta information has no TransferSyntaxUID (0002,0010)")
    if strict:
        _check_read_to_the_end(fp, ds)
    for tag in list(ds.keys()):
        if strict and tag >> 16 == 0xFFFE:
            raise InvalidDicom(f"item or delimitation tag {element_name(tag)} stands outside any sequence")
        # pydicom silently returns short values when the file ends inside an element
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) \
                and raw.length != 0xFFFFFFFF and len(raw.value) < raw.length:
            raise InvalidDicom(f"file is truncated: element {raw.tag} has {len(raw.value)} "
                               f"of its {raw.length} bytes")
    return ds


_ITEM_DELIMITER_LE = b"\xfe\xff\x0d\xe0"


def _check_read_to_the_end(fp: BinaryIO, ds: Dataset) -> None:
    """pydicom ends a data set quietly where an item delimiter stands outside any sequence (and
    skips one that opens it), and the elements after it are lost: the header must end at the
    pixel data or the file's end."""
    end = fp.tell()
    size = fp.seek(0, 2)
    start = dataset_offset(fp)
    fp.seek(start)
    if fp.read(2) == b"\xfe\xff":  # skipped by pydicom when it opens the data set
        raise InvalidDicom(f"an item or delimitation tag (FFFE,xxxx) at byte {start} stands outside any sequence")
    if end >= size:
        return
    fp.seek(end)
    head = fp.read(4)
    try:
        order = "little" if ds.file_meta.TransferSyntaxUID.is_little_endian else "big"
    except (AttributeError, ValueError):  # an unknown transfer syntax: validate() names it
        order = "little"
    tag = int.from_bytes(head[:2], order) << 16 | int.from_bytes(head[2:4], order)
    if len(head) == 4 and tag in PIXEL_DATA_TAGS:
        return
    fp.seek(max(0, end - 8))
    if fp.read(4) == _ITEM_DELIMITER_LE:
        raise InvalidDicom(f"an item delimitation item (FFFE,E00D) outside any sequence at byte {end - 8} "
                           f"ends the data set; {size - end} bytes after it cannot be read")
    raise InvalidDicom(f"the data set cannot be read past byte {end} of {size}")


def element_name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"{Tag(tag)} {keyword}" if keyword else str(Tag(tag))


def check_elements(ds: Dataset, max_depth: int, *, _outer: str = "", _depth: int = 0) -> None:
    """Convert every element now, sequences included. pydicom converts an element's bytes on
    first access, and a value that cannot be read (an unknown VR, a length that does not fit
    it, a delimiter outside any sequence) raises whatever its converter raises, wherever the
    value happens to be read: here it fails once, as :class:`InvalidDicom` naming the element
    (and the top-level sequence holding it)."""
    for tag in list(ds.keys()):
        if tag >> 16 == 0xFFFE:
            raise InvalidDicom(f"item or delimitation tag {_where(tag, _outer, _depth)} stands outside any sequence")
        try:
            elem = ds[tag]
            value = elem.value
        except Exception as exc:  # pydicom's converters raise many types
            raise InvalidDicom(f"element {_where(tag, _outer, _depth)} cannot be read: "
                               f"{type(exc).__name__}: {exc}") from None
        if elem.VR == "SQ" and value:
            outer = _outer or element_name(tag)
            if _depth >= max_depth:
                raise InvalidDicom(f"sequence {outer} nests deeper than ingest.max_sequence_depth={max_depth}")
            for item in value:
                check_elements(item, max_depth, _outer=outer, _depth=_depth + 1)


def _where(tag: int, outer: str, depth: int) -> str:
    name = element_name(tag)
    return f"{name} (in sequence {outer}, depth {depth})" if depth else name


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def dataset_offset(fp: BinaryIO) -> int:
    """Where the data set starts: after the preamble, "DICM" and the file meta group (0002),
    which is always Explicit VR Little Endian (PS3.10 7.1)."""
    offset = 132
    while True:
        fp.seek(offset)
        head = fp.read(8)
        if len(head) < 8 or int.from_bytes(head[0:2], "little") != 0x0002:
            return offset
        vr = head[4:6]
        if vr in _LONG_VRS:
            length = int.from_bytes(fp.read(4), "little")
            offset += 12 + length
        else:
            offset += 8 + int.from_bytes(head[6:8], "little")


def _uid(ds: Dataset, keyword: str, tag: str) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise MissingAttribute(f"{keyword} ({tag}) is missing or empty")
    text = str(value).strip().rstrip("\x00")
    if len(text) > 64 or not _UID_RE.match(text):
        raise MissingAttribute(f"{keyword} ({tag}) is not a valid UID: {text!r}")
    return text


def validate(ds: Dataset) -> Header:
    """Check what every stored instance must have; return its identifying UIDs."""
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID).strip()
    if not UID(transfer_syntax).is_transfer_syntax:
        raise DatasetMismatch(f"transfer syntax {transfer_syntax!r} is not a known DICOM transfer syntax")
    header = Header(
        dataset=ds,
        transfer_syntax=transfer_syntax,
        sop_class_uid=_uid(ds, "SOPClassUID", "0008,0016"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID", "0008,0018"),
        study_uid=_uid(ds, "StudyInstanceUID", "0020,000D"),
        series_uid=_uid(ds, "SeriesInstanceUID", "0020,000E"),
    )
    meta_sop = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")).strip().rstrip("\x00")
    if meta_sop and meta_sop != header.sop_instance_uid:
        raise DatasetMismatch(
            f"MediaStorageSOPInstanceUID {meta_sop} differs from SOPInstanceUID {header.sop_instance_uid}"
        )
    meta_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")).strip().rstrip("\x00")
    if meta_class and meta_class != header.sop_class_uid:
        raise DatasetMismatch(
            f"MediaStorageSOPClassUID {meta_class} differs from SOPClassUID {header.sop_class_uid}"
        )
    return header


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> str | None:
    text = _plain(value)
    return text.replace(":", "") if text else None


def person_name_groups(value: Any) -> tuple[str, str, str]:
    """Alphabetic, ideographic and phonetic groups of a PN value, case-folded for matching."""
    if value is None or str(value) == "":
        return ("", "", "")
    components = getattr(value, "components", None) or tuple(str(value).split("="))
    groups = [str(c).casefold() for c in components] + ["", "", ""]
    return groups[0], groups[1], groups[2]


def index_attributes(ds: Dataset) -> dict[str, Any]:
    """Column values for the index, from a validated header."""
    values: dict[str, Any] = {}
    for attr in INDEXED:
        if attr.keyword in COMPUTED:  # NumberOfFrames is the instance's own, not computed
            continue
        raw = ds.get(attr.keyword)
        if attr.vr in ("IS", "US"):
            values[attr.column] = _int_or_none(raw)
        elif attr.vr == "TM":
            values[attr.column] = _time(raw)
        elif attr.vr == "PN":
            values[attr.column] = str(raw) if raw not in (None, "") else None
            alpha, ideo, phon = person_name_groups(raw)
            values[attr.column + "_alpha"] = alpha
            values[attr.column + "_ideo"] = ideo
            values[attr.column + "_phon"] = phon
        else:
            values[attr.column] = _plain(raw) or None
    return values


def _bulk_paths(ds: Dataset, prefix: str = "") -> dict[int, str]:
    """Map id(element) -> tag path ("00091010/0/00091011") for bulk data elements."""
    paths: dict[int, str] = {}
    for elem in ds:
        path = f"{prefix}{elem.tag:08X}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                paths.update(_bulk_paths(item, f"{path}/{i}/"))
        elif elem.VR in _BULK_VRS:
            paths[id(elem)] = path
    return paths


def header_json(ds: Dataset, *, study_uid: str, series_uid: str, sop_uid: str,
                has_pixel_data: bool) -> dict[str, Any]:
    """The instance's DICOM JSON (PS3.18 F.2) with bulk data replaced by BulkDataURI."""
    instance_url = f"{BASE_PLACEHOLDER}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    paths = _bulk_paths(ds)

    def bulk_uri(elem: DataElement) -> str:
        return f"{instance_url}/bulk/{paths.get(id(elem), f'{elem.tag:08X}')}"

    try:
        body = ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk_uri)
    except Exception as exc:  # pydicom raises many types for malformed values
        raise InvalidDicom(f"DICOM header cannot be converted to JSON: {exc}") from None
    if has_pixel_data:
        pixel_vr = "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
        body["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": f"{instance_url}/bulk/7FE00010"}
    return body


def level_subset(body: dict[str, Any], level: str) -> dict[str, Any]:
    tags = STUDY_LEVEL_TAGS if level == "study" else SERIES_LEVEL_TAGS
    return {tag: value for tag, value in body.items() if tag in tags}


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
