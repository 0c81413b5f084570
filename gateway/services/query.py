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
from typing import Any, Iterable, Mapping

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from auth.base import Principal
from gateway.attributes import BY_KEYWORD, DEFAULT_RETURN, INDEXED, PARENT_RETURN
from gateway.errors import BackendUnavailable, BadRequest
from storage.base import IndexStore
from storage.errors import StorageError
from storage.query import Match, Query

logger = logging.getLogger(__name__)

_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_UID_RE = re.compile(r"^[0-9.]{1,64}$")
_LEVEL_OF = {"study": ("study",), "series": ("study", "series"), "instance": ("study", "series", "instance")}


@dataclass
class SearchOutcome:
    results: list[dict[str, Any]]
    truncated: bool = False
    ignored: list[str] = field(default_factory=list)  # valid attributes the index cannot match on


def resolve_attribute(name: str) -> tuple[str, str]:
    """A keyword or 8-hex-digit tag → (keyword, tag hex). Raises BadRequest if unknown."""
    text = name.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        tag = int(text, 16)
        keyword = keyword_for_tag(tag)
        return (keyword or text.upper()), f"{tag:08X}"
    tag = tag_for_keyword(text)
    if tag is None:
        raise BadRequest(f"unknown attribute {name!r}: not a DICOM keyword or an 8-digit hexadecimal tag")
    return text, f"{tag:08X}"


def _check_date(value: str, keyword: str) -> str:
    if not _DATE_RE.match(value):
        raise BadRequest(f"{keyword}: {value!r} is not a date (YYYYMMDD)")
    return value


def _check_time(value: str, keyword: str) -> str:
    value = value.replace(":", "")
    if not _TIME_RE.match(value):
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


class QueryService:
    def __init__(self, index: IndexStore, settings):
        self.index = index
        self.max_limit = settings["dicomweb.qido_max_limit"]
        self.default_limit = settings["dicomweb.qido_default_limit"]

    def search(self, principal: Principal, level: str, filters: Mapping[str, str], *,
               include: Iterable[str] | str = (), limit: int | None = None, offset: int = 0,
               fuzzy: bool = False, study_uid: str | None = None,
               series_uid: str | None = None) -> SearchOutcome:
        """``filters`` maps keywords to DICOM matching strings; ``include`` is keywords or "all"."""
        matches: list[Match] = []
        ignored: list[str] = []
        allowed_levels = _LEVEL_OF[level]
        for keyword, value in filters.items():
            attr = BY_KEYWORD.get(keyword)
            if attr is None or attr.level not in allowed_levels:
                if value.strip():
                    ignored.append(keyword)
                continue
            match = build_match(keyword, value, fuzzy=fuzzy)
            if match is not None:
                matches.append(match)
        query = Query(level=level, clinic_id=principal.clinic_id, matches=matches,
                      study_uid=study_uid, series_uid=series_uid,
                      limit=min(limit or self.default_limit, self.max_limit), offset=offset)
        include_all = include == "all"
        extra = set() if include_all else {resolve_attribute(k)[1] for k in include}
        query.with_headers = level == "instance" and (include_all or any(
            tag not in {a.tag for a in INDEXED} for tag in extra))
        try:
            found = self.index.search(query)
        except StorageError as exc:
            raise BackendUnavailable(f"index search failed: {exc}") from exc
        truncated = found.truncated or (limit is not None and limit > self.max_limit)
        requested = {k for k in filters} | {keyword_for_tag(int(t, 16)) or t for t in extra}
        results = [self._result(row, level, requested, extra, include_all) for row in found.rows]
        return SearchOutcome(results, truncated, ignored)

    def _result(self, row: dict[str, Any], level: str, requested: set[str], extra_tags: set[str],
                include_all: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        # Attributes kept from the first instance (study/series level), then the instance's own.
        sources = [json.loads(row.get("study_json") or "{}")]
        if level in ("series", "instance"):
            sources.append(json.loads(row.get("series_json") or "{}"))
        if level == "instance" and row.get("header_json"):
            sources.append(json.loads(row["header_json"]))
        merged: dict[str, Any] = {}
        for source in sources:
            merged.update(source)
        if include_all:
            for tag, element in merged.items():
                if tag != "7FE00010":
                    body[tag] = element
        else:
            for tag in extra_tags:
                if tag in merged:
                    body[tag] = merged[tag]
        keywords = set(DEFAULT_RETURN[level]) | set(PARENT_RETURN[level])
        if include_all:
            keywords |= {a.keyword for a in INDEXED if a.level in _LEVEL_OF[level]}
        keywords |= {k for k in requested if k in BY_KEYWORD and BY_KEYWORD[k].level in _LEVEL_OF[level]}
        for keyword in keywords:
            attr = BY_KEYWORD[keyword]
            if attr.vr == "PN" and attr.tag in merged:
                body[attr.tag] = merged[attr.tag]  # keeps the three name groups as received
                continue
            value = row.get(attr.column)
            if keyword == "ModalitiesInStudy":
                value = (value or "").strip("\\")
            body[attr.tag] = _element(attr.vr, value)
        if "00080005" in merged:
            body["00080005"] = merged["00080005"]
        return dict(sorted(body.items()))


def vr_of(tag_hex: str) -> str:
    try:
        return dictionary_VR(int(tag_hex, 16))
    except KeyError:
        return "UN"
