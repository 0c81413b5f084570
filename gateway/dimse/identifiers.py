"""Query/Retrieve identifiers (PS3.4 C.4) translated to and from the one query model.

A C-FIND identifier's elements are the request: an element with a value is a matching
key (single value, ``*``/``?`` wildcards, ``a-b`` ranges, ``\\``-separated UID lists, as
QIDO-RS takes them), every element is a return key. Matching goes through
:meth:`gateway.services.query.QueryService.search`, the same as QIDO-RS; each result
comes back as DICOM JSON and is turned into a response identifier holding exactly the
requested keys (empty when the gateway has no value), plus QueryRetrieveLevel,
RetrieveAETitle and the character set.

C-MOVE and C-GET identifiers name what to retrieve by the unique key of their level
(PatientID, StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID, lists allowed); the
matching instances are found through the same search, then listed by the retrieve
service.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pynetdicom import sop_class as sc

from auth.base import Principal
from gateway.errors import BadRequest, DatasetMismatch, NotFound

logger = logging.getLogger(__name__)

MODELS = {
    sc.PatientRootQueryRetrieveInformationModelFind: "patient",
    sc.PatientRootQueryRetrieveInformationModelMove: "patient",
    sc.PatientRootQueryRetrieveInformationModelGet: "patient",
    sc.StudyRootQueryRetrieveInformationModelFind: "study",
    sc.StudyRootQueryRetrieveInformationModelMove: "study",
    sc.StudyRootQueryRetrieveInformationModelGet: "study",
}
LEVELS = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
UNIQUE_KEYS = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID",
               "instance": "SOPInstanceUID"}
UNIQUE_KEYS_ORDER = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
PAGE = 500

_QUERY_RETRIEVE_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005
_RETRIEVE_AE_TITLE = 0x00080054
_INSTANCE_AVAILABILITY = 0x00080056
_NOT_KEYS = {_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET, _RETRIEVE_AE_TITLE, _INSTANCE_AVAILABILITY}


class IdentifierMismatch(DatasetMismatch):
    """The identifier does not fit the information model (0xA900 for C-FIND/C-MOVE/C-GET)."""


@dataclass
class RequestKey:
    tag: int
    keyword: str  # pydicom keyword, or 8 hex digits for private/unknown tags
    vr: str
    value: str  # matching string, "" for universal matching


@dataclass
class QueryRequest:
    model: str  # patient | study (root)
    level: str  # patient | study | series | instance
    level_name: str  # as received: PATIENT | STUDY | SERIES | IMAGE
    keys: list[RequestKey] = field(default_factory=list)
    availability_requested: bool = False

    @property
    def filters(self) -> dict[str, str]:
        return {k.keyword: k.value for k in self.keys}

    @property
    def include(self) -> list[str]:
        return [k.keyword for k in self.keys]

    def value(self, keyword: str) -> str:
        for key in self.keys:
            if key.keyword == keyword:
                return key.value.strip()
        return ""


def _matching_string(elem) -> str:
    value = elem.value
    if value is None or elem.VR == "SQ" or isinstance(value, (bytes, bytearray)):
        return ""  # sequence and binary matching are not supported: return keys only
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def parse(identifier: Dataset, model: str) -> QueryRequest:
    """Read a Q/R identifier; raises :class:`IdentifierMismatch` or :class:`BadRequest`."""
    try:
        raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception as exc:  # pydicom decodes lazily; any element may be malformed
        raise BadRequest(f"identifier cannot be decoded: {exc}") from None
    if not raw_level:
        raise IdentifierMismatch("QueryRetrieveLevel (0008,0052) is missing")
    level = LEVELS.get(raw_level)
    if level is None:
        raise IdentifierMismatch(f"QueryRetrieveLevel {raw_level!r} is not PATIENT, STUDY, SERIES or IMAGE")
    if model == "study" and level == "patient":
        raise IdentifierMismatch("the Study Root model has no PATIENT level: use Patient Root")
    request = QueryRequest(model, level, raw_level)
    try:
        for elem in identifier:
            tag = int(elem.tag)
            if elem.tag.group in (0x0000, 0x0002) or tag in _NOT_KEYS:
                request.availability_requested |= tag == _INSTANCE_AVAILABILITY
                continue
            keyword = elem.keyword or f"{tag:08X}"
            request.keys.append(RequestKey(tag, keyword, elem.VR, _matching_string(elem)))
    except Exception as exc:
        raise BadRequest(f"identifier cannot be decoded: {exc}") from None
    return request


def search_pages(search: Callable[..., Any], principal: Principal, level: str, filters: dict[str, str], *,
                 include: list[str] | None = None, page: int = PAGE) -> Iterator[Any]:
    """Every :class:`SearchOutcome` page of a search, following offsets to the end."""
    offset = 0
    while True:
        outcome = search(principal, level, filters, include=include or (), limit=page, offset=offset)
        yield outcome
        if not outcome.truncated or not outcome.results:
            return
        offset += len(outcome.results)


def _element_from_json(tag: int, element: dict[str, Any]):
    key = f"{tag:08X}"
    ds = Dataset.from_json({key: element}, bulk_data_uri_handler=lambda *_: None)
    return ds[Tag(tag)]


def response(request: QueryRequest, result: dict[str, Any], *, ae_title: str) -> Dataset:
    """The C-FIND response identifier for one match: exactly the requested keys."""
    ds = Dataset()
    charset = result.get("00080005", {}).get("Value")
    if charset:
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    elif not json.dumps(result, ensure_ascii=False).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = request.level_name
    for key in request.keys:
        element = result.get(f"{key.tag:08X}")
        if element is not None and ("Value" in element or "InlineBinary" in element):
            try:
                ds[Tag(key.tag)] = _element_from_json(key.tag, element)
                continue
            except Exception as exc:  # an odd stored value must not fail the whole query
                logger.warning("C-FIND: cannot return %s (%s): %s", key.keyword, key.vr, exc)
        ds.add_new(key.tag, key.vr, [] if key.vr == "SQ" else None)
    ds.RetrieveAETitle = ae_title
    if request.availability_requested:
        ds.InstanceAvailability = "ONLINE"
    return ds


def _value(result: dict[str, Any], tag: str) -> str | None:
    values = result.get(tag, {}).get("Value")
    return str(values[0]) if values else None


def retrieve_records(services, principal: Principal, request: QueryRequest) -> list:
    """The stored instances a C-MOVE/C-GET identifier names, in study/series/instance order."""
    level = request.level
    unique = UNIQUE_KEYS[level]
    wanted = request.value(unique)
    if not wanted or "*" in wanted or "?" in wanted:
        raise IdentifierMismatch(f"a retrieve at the {request.level_name} level needs {unique} "
                                 "(one value or a list, no wildcards)")
    search = services.query.search
    retrieve = services.retrieve
    filters = {k: v for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
               if (v := request.value(k)) and UNIQUE_KEYS_ORDER.index(k) <= UNIQUE_KEYS_ORDER.index(unique)}
    if level == "patient":
        studies = [_value(r, "0020000D") for page in search_pages(search, principal, "study", filters)
                   for r in page.results]
        return [rec for study in dict.fromkeys(studies) if study
                for rec in _instances(retrieve, principal, study)]
    if level == "study":
        uids = [u for u in wanted.replace(",", "\\").split("\\") if u.strip()]
        if "PatientID" in filters:  # Patient Root: the studies must be that patient's
            uids = [_value(r, "0020000D") for page in search_pages(search, principal, "study", filters)
                    for r in page.results]
        return [rec for study in dict.fromkeys(uids) if study
                for rec in _instances(retrieve, principal, study.strip())]
    search_level = "series" if level == "series" else "instance"
    found = [(_value(r, "0020000D"), _value(r, "0020000E"), _value(r, "00080018"))
             for page in search_pages(search, principal, search_level, filters) for r in page.results]
    records = []
    by_series: dict[tuple[str, str], set[str] | None] = {}
    for study, series, sop in found:
        if level == "series":
            by_series[(study, series)] = None
        else:
            by_series.setdefault((study, series), set()).add(sop)  # type: ignore[union-attr]
    for (study, series), sops in by_series.items():
        for rec in _instances(retrieve, principal, study, series):
            if sops is None or rec.sop_uid in sops:
                records.append(rec)
    return records


def _instances(retrieve, principal: Principal, study: str, series: str | None = None) -> list:
    """What C-MOVE/C-GET send: the original instances, so a share must allow ``download``."""
    try:
        return retrieve.instances(principal, study, series, need="download")
    except NotFound:
        return []
