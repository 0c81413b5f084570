"""The one query path: QIDO-RS, C-FIND and the fast API's lists all search through here.

Front doors hand over attribute keywords with DICOM matching strings (PS3.4
C.2.2.2); this module turns them into a :class:`storage.query.Query` and turns the
index rows back into DICOM JSON.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from auth.audit import OK
from auth.base import Principal
from gateway.errors import BackendUnavailable, BadRequest
from gateway.services.rendered_rows import RenderedRows
from storage.attributes import BY_KEYWORD, DEFAULT_RETURN, INDEXED, PARENT_RETURN
from storage.base import InstanceIndex
from storage.errors import StorageError
from storage.query import Match, Query

logger = logging.getLogger(__name__)

_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_UID_RE = re.compile(r"^[0-9.]{1,64}$")
_LEVEL_OF = {"study": ("study",), "series": ("study", "series"), "instance": ("study", "series", "instance")}


# Patient level (Patient Root C-FIND): the patient keys, kept with each study, and the
# computed counts of the patient's studies, series and instances.
PATIENT_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
PATIENT_COUNTS = {
    "NumberOfPatientRelatedStudies": ("00201200", "num_studies"),
    "NumberOfPatientRelatedSeries": ("00201202", "num_series"),
    "NumberOfPatientRelatedInstances": ("00201204", "num_instances"),
}


@dataclass
class SearchOutcome:
    results: list[dict[str, Any]] | list[str]  # DICOM JSON objects, or their text (``as_json``)
    truncated: bool = False
    ignored: list[str] = field(default_factory=list)  # valid attributes the index cannot match on


def resolve_attribute(name: str) -> tuple[str, str]:
    """A keyword or 8-hex-digit tag → (keyword, tag hex). Raises BadRequest if unknown."""
    text = name.strip()
    if not text:  # pydicom's dictionary has an entry with an empty keyword (300A,0782)
        raise BadRequest(f"unknown attribute {name!r}: empty attribute name")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        tag = int(text, 16)
        keyword = keyword_for_tag(tag)
        return (keyword or text.upper()), f"{tag:08X}"
    tag = tag_for_keyword(text)
    if tag is None:
        raise BadRequest(f"unknown attribute {name!r}: not a DICOM keyword or an 8-digit hexadecimal tag")
    return text, f"{tag:08X}"


def _check_date(value: str, keyword: str) -> str:
    try:
        valid = bool(_DATE_RE.match(value)) and bool(datetime.strptime(value, "%Y%m%d"))
    except ValueError:  # 8 digits but no calendar date (month 13, 30 February)
        valid = False
    if not valid:
        raise BadRequest(f"{keyword}: {value!r} is not a date (YYYYMMDD)")
    return value


def _check_time(value: str, keyword: str) -> str:
    value = value.replace(":", "")
    hhmmss = value.split(".")[0]
    if (not _TIME_RE.match(value) or int(hhmmss[:2]) > 23 or int(hhmmss[2:4] or 0) > 59
            or int(hhmmss[4:6] or 0) > 60):  # 60: leap second
        raise BadRequest(f"{keyword}: {value!r} is not a time (HHMMSS.FFFFFF)")
    return value


def build_match(keyword: str, value: str, *, fuzzy: bool = False) -> Match | None:
    """One matching key → a Match, or None for universal matching (empty value)."""
    attr = BY_KEYWORD[keyword]
    value = value.strip()
    if value in ("", "*"):
        return None
    if attr.vr in ("DA", "TM", "DT"):
        check = _check_date if attr.vr == "DA" else _check_time
        if "-" in value:
            low, _, high = value.partition("-")
            if not low and not high:
                raise BadRequest(f"{keyword}: range {value!r} has neither start nor end")
            low = check(low, keyword) if low else None
            high = check(high, keyword) if high else None
            if low and high and low > high:
                raise BadRequest(f"{keyword}: range {value!r} starts after it ends")
            return Match(keyword, "range", (low, high))
        return Match(keyword, "single", check(value, keyword))
    if attr.vr == "UI" or keyword == "ModalitiesInStudy":
        values = tuple(v.strip() for v in re.split(r"[\\,]", value) if v.strip())
        if not values:
            raise BadRequest(f"{keyword}: {value!r} is a list without any value")
        if attr.vr == "UI":
            bad = [v for v in values if not _UID_RE.match(v)]
            if bad:
                raise BadRequest(f"{keyword}: {bad[0]!r} is not a UID")
        return Match(keyword, "uids", values) if len(values) > 1 else Match(keyword, "single", values[0])
    if attr.vr in ("IS", "US"):
        if not re.fullmatch(r"[+-]?\d+", value):
            raise BadRequest(f"{keyword}: {value!r} is not an integer")
        return Match(keyword, "single", value)
    if attr.vr == "PN" and fuzzy and "*" not in value and "?" not in value:
        return Match(keyword, "fuzzy", value)
    if "*" in value or "?" in value:
        return Match(keyword, "wildcard", value)
    return Match(keyword, "single", value)


def _element(attr_vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": attr_vr}
    if attr_vr in _PLAIN_VRS and (type(value) is not str or "\\" not in value):
        return {"vr": attr_vr, "Value": [value]}
    if attr_vr == "PN":
        groups = str(value).split("=")
        pn = {"Alphabetic": groups[0]}
        if len(groups) > 1 and groups[1]:
            pn["Ideographic"] = groups[1]
        if len(groups) > 2 and groups[2]:
            pn["Phonetic"] = groups[2]
        return {"vr": "PN", "Value": [pn]}
    if attr_vr in ("IS", "US"):
        return {"vr": attr_vr, "Value": [int(value)]}
    if isinstance(value, str) and "\\" in value:
        return {"vr": attr_vr, "Value": [v for v in value.split("\\") if v]}
    return {"vr": attr_vr, "Value": [value]}


# VRs whose value goes into DICOM JSON as it is in the index (no groups, no integer conversion).
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "LO", "LT", "SH", "ST", "TM", "UI", "UT", "UC", "UR"})


def _upper_level_keys(level: str, study_uid: str | None, series_uid: str | None) -> set[str]:
    """Upper-level attributes a search across studies (or series) returns (PS3.18 10.6.3.3.2-3):
    all series → study attributes; all instances → study and series ones; a study's
    instances → series ones."""
    keys: set[str] = set()
    if level in ("series", "instance") and study_uid is None:
        keys |= set(DEFAULT_RETURN["study"])
    if level == "instance" and series_uid is None:
        keys |= set(DEFAULT_RETURN["series"])
    return keys


class QueryService:
    def __init__(self, index: InstanceIndex, settings, *, access):
        self.index = index
        self.access = access  # auth.access.AccessControl: the tenant scope, audited
        self.max_limit = settings["dicomweb.qido_max_limit"]
        self.default_limit = settings["dicomweb.qido_default_limit"]
        self.rendered = RenderedRows()

    def _scope(self, principal: Principal, level: str, filters: Mapping[str, str],
               study_uid: str | None) -> tuple[str | None, tuple]:
        """The tenant scope of a search (own clinic, shares), audited."""
        own, shared = self.access.query_scope(principal)
        detail = ", ".join(f"{k}={v}" for k, v in sorted(filters.items()) if v.strip())[:500] or None
        self.access.audit.record("search", OK, principal=principal,
                                 resource=f"search:{level}" + (f"/study:{study_uid}" if study_uid else ""),
                                 detail=detail)
        return own, shared

    def search(self, principal: Principal, level: str, filters: Mapping[str, str], *,
               include: Iterable[str] | str = (), limit: int | None = None, offset: int = 0,
               fuzzy: bool = False, study_uid: str | None = None,
               series_uid: str | None = None, as_json: bool = False,
               retrieve_root: str | None = None) -> SearchOutcome:
        """``filters`` maps keywords to DICOM matching strings; ``include`` is keywords or "all".

        ``retrieve_root``: each result carries its RetrieveURL (0008,1190) under this root;
        ``as_json``: the results as DICOM JSON text (made once per row and shape, see
        :mod:`gateway.services.rendered_rows`)."""
        if level == "patient":
            outcome = self._search_patients(principal, filters, include=include, limit=limit, offset=offset,
                                            fuzzy=fuzzy)
            if as_json:
                outcome.results = [_dumps(r) for r in outcome.results]
            return outcome
        matches: list[Match] = []
        ignored: list[str] = []
        universal: list[str] = []
        allowed_levels = _LEVEL_OF[level]
        for keyword, value in filters.items():
            attr = BY_KEYWORD.get(keyword)
            if attr is None or attr.level not in allowed_levels:
                if value.strip():
                    ignored.append(keyword)
                else:  # universal matching on a kept attribute: a return key (PS3.4 C.2.2.2.3)
                    universal.append(keyword)
                continue
            match = build_match(keyword, value, fuzzy=fuzzy)
            if match is not None:
                matches.append(match)
        own, shared = self._scope(principal, level, filters, study_uid)
        query = Query(level=level, clinic_id=own, matches=matches,
                      study_uid=study_uid, series_uid=series_uid,
                      limit=min(limit or self.default_limit, self.max_limit), offset=offset, shared=shared)
        include_all = include == "all"
        extra = set() if include_all else {resolve_attribute(k)[1] for k in (*include, *universal)}
        query.with_headers = level == "instance" and (include_all or any(
            tag not in {a.tag for a in INDEXED} for tag in extra))
        try:
            found = self.index.search(query)
        except StorageError as exc:
            raise BackendUnavailable(f"index search failed: {exc}") from exc
        truncated = found.truncated or (limit is not None and limit > self.max_limit)
        requested = {k for k in filters} | {keyword_for_tag(int(t, 16)) or t for t in extra}
        requested |= _upper_level_keys(level, study_uid, series_uid)
        columns = self._columns(level, requested, include_all, found.rows[0] if found.rows else {})
        if not as_json:
            return SearchOutcome([self._result(row, level, columns, extra, include_all, retrieve_root)
                                  for row in found.rows], truncated, ignored)
        shape = (level, tuple(columns), tuple(sorted(extra)), include_all, retrieve_root)
        texts = []
        for row in found.rows:
            try:
                key = (shape, tuple(row.items()))
                text = self.rendered.get(key)
            except TypeError:  # a value that cannot be a key: rendered, not kept
                key, text = None, None
            if text is None:
                text = _dumps(self._result(row, level, columns, extra, include_all, retrieve_root))
                if key is not None:
                    self.rendered.put(key, text, sum(len(v) for v in row.values() if isinstance(v, str)))
            texts.append(text)
        return SearchOutcome(texts, truncated, ignored)

    def _search_patients(self, principal: Principal, filters: Mapping[str, str], *,
                         include: Iterable[str] | str, limit: int | None, offset: int,
                         fuzzy: bool) -> SearchOutcome:
        """Patient level (Patient Root C-FIND): patients with a study matching the patient keys.

        Each study carries its patient's attributes; a patient is one PatientID in a clinic,
        described by its newest study. The related-object counts cover all its studies.
        """
        matches: list[Match] = []
        ignored: list[str] = []
        extra: set[str] = set()
        for keyword, value in filters.items():
            if keyword in PATIENT_KEYWORDS:
                match = build_match(keyword, value, fuzzy=fuzzy)
                if match is not None:
                    matches.append(match)
            elif value.strip():
                ignored.append(keyword)
            elif keyword not in PATIENT_COUNTS:
                extra.add(resolve_attribute(keyword)[1])
        include_all = include == "all"
        if not include_all:
            extra |= {resolve_attribute(k)[1] for k in include}
        own, _shared = self._scope(principal, "patient", filters, None)  # patients: own clinic only
        query = Query(level="patient", clinic_id=own, matches=matches,  # type: ignore[arg-type]
                      limit=min(limit or self.default_limit, self.max_limit), offset=offset)
        try:
            found = self.index.search(query)
        except StorageError as exc:
            raise BackendUnavailable(f"index search failed: {exc}") from exc
        results = []
        for row in found.rows:
            merged = json.loads(row.get("study_json") or "{}")
            body = {tag: element for tag, element in merged.items()
                    if (tag.startswith("0010") if include_all else tag in extra)}
            for keyword in PATIENT_KEYWORDS:
                attr = BY_KEYWORD[keyword]
                body[attr.tag] = (merged[attr.tag] if attr.vr == "PN" and attr.tag in merged
                                  else _element(attr.vr, row.get(attr.column)))
            for tag, column in PATIENT_COUNTS.values():
                body[tag] = _element("IS", row.get(column))
            if "00080005" in merged:
                body["00080005"] = merged["00080005"]
            results.append(dict(sorted(body.items())))
        truncated = found.truncated or (limit is not None and limit > self.max_limit)
        return SearchOutcome(results, truncated, ignored)

    @staticmethod
    def _columns(level: str, requested: set[str], include_all: bool, first_row: dict[str, Any]) -> list[tuple]:
        """(keyword, tag, vr, row key) of every indexed attribute a result of this search
        carries: worked out once per search, not per row."""
        keywords = set(DEFAULT_RETURN[level]) | set(PARENT_RETURN[level])
        if include_all:
            keywords |= {a.keyword for a in INDEXED if a.level in _LEVEL_OF[level]}
        keywords |= {k for k in requested if k in BY_KEYWORD and BY_KEYWORD[k].level in _LEVEL_OF[level]}
        columns = []
        for keyword in sorted(keywords):
            attr = BY_KEYWORD[keyword]
            # Joined rows repeat column names (num_instances): study counters come aliased.
            key = f"study_{attr.column}"
            columns.append((keyword, attr.tag, attr.vr,
                            key if attr.level == "study" and key in first_row else attr.column))
        return columns

    def _result(self, row: dict[str, Any], level: str, columns: list[tuple], extra_tags: set[str],
                include_all: bool, retrieve_root: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        # Attributes kept from the first instance (study/series level), then the instance's own.
        merged: dict[str, Any] = json.loads(row.get("study_json") or "{}")
        if level in ("series", "instance"):
            merged.update(json.loads(row.get("series_json") or "{}"))
        if level == "instance" and row.get("header_json"):
            merged.update(json.loads(row["header_json"]))
        if include_all:
            for tag, element in merged.items():
                if tag != "7FE00010":
                    body[tag] = element
        else:
            for tag in extra_tags:
                if tag in merged:
                    body[tag] = merged[tag]
        for keyword, tag, vr, key in columns:
            if vr == "PN" and tag in merged:
                body[tag] = merged[tag]  # keeps the three name groups as received
                continue
            value = row.get(key)
            if keyword == "ModalitiesInStudy":
                value = (value or "").strip("\\")
                if not value:  # OHIF v3 reads ModalitiesInStudy.Value.length unguarded
                    continue
            body[tag] = _element(vr, value)
        if "00080005" in merged:
            body["00080005"] = merged["00080005"]
        if retrieve_root is not None:
            body["00081190"] = {"vr": "UR", "Value": [retrieve_url(retrieve_root, level, body)]}
        return dict(sorted(body.items()))


def _dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


def _uid(result: dict, tag: str) -> str:
    return (result.get(tag, {}).get("Value") or [""])[0]


def retrieve_url(root: str, level: str, result: dict) -> str:
    """RetrieveURL (0008,1190) of a result (PS3.18 Tables 10.6.3-3 to -5)."""
    url = f"{root}/studies/{_uid(result, '0020000D')}"
    if level in ("series", "instance"):
        url += f"/series/{_uid(result, '0020000E')}"
    if level == "instance":
        url += f"/instances/{_uid(result, '00080018')}"
    return url


def vr_of(tag_hex: str) -> str:
    try:
        return dictionary_VR(int(tag_hex, 16))
    except KeyError:
        return "UN"
