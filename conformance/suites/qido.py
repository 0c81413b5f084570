"""QIDO-RS (PS3.18 10.6, 8.3.4; matching PS3.4 C.2.2.2): endpoints, matching, paging, errors."""
from __future__ import annotations

import logging
import re

from conformance.suites.base import Context, Suite
from conformance.suites.common import (SERIES_UID, SOP_UID, STUDY_UID, expect_status, first, qido, qido_results,
                                       text, uids, values)
from conformance.targets import encode_literal, encode_python

logger = logging.getLogger(__name__)

suite = Suite("qido", "QIDO-RS (PS3.18 10.6)", needs="dicomweb")

# PS3.18 Table 10.6.3-3/-4/-5 (returned by default), as keywords → tags.
STUDY_KEYS = {"StudyDate": "00080020", "StudyTime": "00080030", "AccessionNumber": "00080050",
              "ModalitiesInStudy": "00080061", "ReferringPhysicianName": "00080090", "PatientName": "00100010",
              "PatientID": "00100020", "PatientBirthDate": "00100030", "PatientSex": "00100040",
              "StudyInstanceUID": STUDY_UID, "StudyID": "00200010"}
SERIES_KEYS = {"Modality": "00080060", "SeriesInstanceUID": SERIES_UID, "SeriesNumber": "00200011"}
INSTANCE_KEYS = {"SOPClassUID": "00080016", "SOPInstanceUID": SOP_UID, "InstanceNumber": "00200013",
                 "Rows": "00280010", "Columns": "00280011", "BitsAllocated": "00280100"}


def _studies(ctx: Context):
    return ctx.fixture("studies")


def _search(ctx: Context, path: str, pairs: list[tuple[str, str]], what: str, **kwargs) -> list[dict]:
    return qido_results(ctx, qido(ctx, path, pairs, **kwargs), what)


def _expect_set(ctx: Context, got: list[str], expected: set[str], what: str) -> None:
    ctx.expect(set(got) == expected and len(got) == len(expected),
               f"{what}: got {len(got)} result(s) {sorted(got)}, expected exactly {sorted(expected)}")


def _expect_keys(ctx: Context, results: list[dict], keys: dict[str, str], what: str) -> None:
    for result in results:
        missing = [k for k, tag in keys.items() if tag not in result]
        ctx.expect(not missing, f"{what}: a result lacks {', '.join(missing)} (returned by default, "
                                "PS3.18 Table 10.6.3-3/-4/-5)")


def _ours(ctx: Context) -> list[tuple[str, str]]:
    """A matching key that keeps results to this run's studies A and B."""
    return [("PatientName", f"{ctx.data.name_prefix}*")]


# --- the six endpoints ------------------------------------------------------------------------

@suite.check("studies", "GET /studies finds a study with the default study attributes",
             "PS3.18 10.6.1 (/studies); Table 10.6.3-3")
def studies(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, "studies", [("PatientID", a.patient_id)], "/studies?PatientID")
    _expect_set(ctx, uids(results, STUDY_UID), {a.uid}, "/studies?PatientID")
    _expect_keys(ctx, results, STUDY_KEYS, "/studies")
    ctx.expect(text(results[0], "00080050") == f"ACC{ctx.data.token}", "AccessionNumber differs from the stored one")


@suite.check("study-series", "GET /studies/{study}/series lists the study's series",
             "PS3.18 10.6.1 (/studies/{study}/series); Table 10.6.3-4")
def study_series(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, f"studies/{a.uid}/series", [], "/studies/{study}/series")
    _expect_set(ctx, uids(results, SERIES_UID), set(a.series()), "/studies/{study}/series")
    _expect_keys(ctx, results, SERIES_KEYS, "/studies/{study}/series")


@suite.check("series", "GET /series?StudyInstanceUID= lists series with their study",
             "PS3.18 10.6.1 (/series); Table 10.6.3-4")
def all_series(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, "series", [("StudyInstanceUID", a.uid)], "/series?StudyInstanceUID")
    _expect_set(ctx, uids(results, SERIES_UID), set(a.series()), "/series?StudyInstanceUID")
    _expect_keys(ctx, results, {**SERIES_KEYS, "StudyInstanceUID": STUDY_UID}, "/series")


@suite.check("series-instances", "GET /studies/{study}/series/{series}/instances lists the instances",
             "PS3.18 10.6.1; Table 10.6.3-5")
def series_instances(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = next(iter(a.series().items()))
    results = _search(ctx, f"studies/{a.uid}/series/{series_uid}/instances", [], "series instances")
    _expect_set(ctx, uids(results, SOP_UID), {i.sop for i in instances}, "series instances")
    _expect_keys(ctx, results, INSTANCE_KEYS, "series instances")


@suite.check("study-instances", "GET /studies/{study}/instances lists every instance with its series",
             "PS3.18 10.6.1; Table 10.6.3-5")
def study_instances(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, f"studies/{a.uid}/instances", [], "study instances")
    _expect_set(ctx, uids(results, SOP_UID), {i.sop for i in a.instances}, "study instances")
    _expect_keys(ctx, results, {**INSTANCE_KEYS, "SeriesInstanceUID": SERIES_UID}, "study instances")


@suite.check("instances", "GET /instances?StudyInstanceUID= lists instances with their study and series",
             "PS3.18 10.6.1 (/instances); Table 10.6.3-5")
def all_instances(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, "instances", [("StudyInstanceUID", a.uid)], "/instances?StudyInstanceUID")
    _expect_set(ctx, uids(results, SOP_UID), {i.sop for i in a.instances}, "/instances")
    _expect_keys(ctx, results, {**INSTANCE_KEYS, "StudyInstanceUID": STUDY_UID, "SeriesInstanceUID": SERIES_UID},
                 "/instances")


@suite.check("instance-retrieve-url", "each instance result carries its Retrieve URL",
             "PS3.18 10.6.3.3.3 Table 10.6.3-5 (Retrieve URL (0008,1190), R: present if retrievable)")
def instance_retrieve_url(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = next(iter(a.series().items()))
    results = _search(ctx, f"studies/{a.uid}/series/{series_uid}/instances", [], "series instances")
    for result in results:
        url = text(result, "00081190")
        sop = text(result, SOP_UID)
        ctx.expect(url, f"the result of instance {sop} has no RetrieveURL (0008,1190)")
        ctx.expect(url.rstrip("/").endswith(f"/instances/{sop}"), f"RetrieveURL {url!r} is not instance {sop}'s")


@suite.check("all-series-study-attributes", "GET /series results also carry the study's attributes",
             "PS3.18 10.6.3.3.2 (All Series: include all Study Level Attributes of 10.6.3.3.1)")
def all_series_study_attributes(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, "series", [("StudyInstanceUID", a.uid)], "/series?StudyInstanceUID")
    ctx.expect(results, "/series found nothing")
    for result in results:
        missing = [k for k, tag in STUDY_KEYS.items() if tag not in result]
        ctx.expect(not missing, f"a /series result lacks the study attribute(s) {', '.join(missing)}")


# --- matching --------------------------------------------------------------------------------

@suite.check("match-single-value", "single value matching", "PS3.4 C.2.2.2.1; PS3.18 8.3.4.1")
def single_value(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, "studies", [("AccessionNumber", f"ACC{ctx.data.token}")], "AccessionNumber=")
    _expect_set(ctx, uids(results, STUDY_UID), {a.uid}, "single value AccessionNumber")


@suite.check("match-universal", "an empty value (universal matching) filters nothing",
             "PS3.4 C.2.2.2.3; PS3.18 8.3.4.1")
def universal(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, "studies", [("PatientID", a.patient_id), ("StudyDescription", "")],
                      "StudyDescription= (empty)")
    _expect_set(ctx, uids(results, STUDY_UID), {a.uid}, "universal matching")


@suite.check("match-wildcard-star", "wildcard * matches any sequence", "PS3.4 C.2.2.2.4")
def wildcard_star(ctx: Context) -> None:
    s = _studies(ctx)
    results = _search(ctx, "studies", _ours(ctx), "PatientName=prefix*")
    _expect_set(ctx, uids(results, STUDY_UID), {s["main"].uid, s["other"].uid}, "PatientName wildcard *")


@suite.check("match-wildcard-question", "wildcard ? matches one character", "PS3.4 C.2.2.2.4")
def wildcard_question(ctx: Context) -> None:
    s = _studies(ctx)
    results = _search(ctx, "studies", [("PatientID", f"CF-{ctx.data.token}-?")], "PatientID=...-?",
                      encoder=encode_literal)  # a literal "?" (RFC 3986 3.4 allows it in a query)
    pattern = re.compile(rf"^CF-{ctx.data.token}-.$")
    bad = [text(r, "00100020") for r in results if not pattern.match(text(r, "00100020") or "")]
    ctx.expect(not bad, f"PatientID wildcard ? matched {bad}")
    got = set(uids(results, STUDY_UID))
    expected = {s["main"].uid, s["other"].uid, s["ohif"].uid}
    ctx.expect(expected <= got, f"PatientID wildcard ?: got {sorted(got)}, expected {sorted(expected)} among them")


@suite.check("match-uid-list", "a comma-separated UID list matches each UID", "PS3.4 C.2.2.2.2; PS3.18 8.3.4.1")
def uid_list(ctx: Context) -> None:
    s = _studies(ctx)
    wanted = {s["main"].uid, s["other"].uid}
    results = _search(ctx, "studies", [("StudyInstanceUID", ",".join(sorted(wanted)))], "StudyInstanceUID=a,b")
    _expect_set(ctx, uids(results, STUDY_UID), wanted, "UID list with commas")


@suite.check("match-uid-list-backslash", "a backslash-separated UID list (DIMSE style) matches each UID",
             "PS3.4 C.2.2.2.2 (backslash as value delimiter); DIMSE-minded clients", level="interop")
def uid_list_backslash(ctx: Context) -> None:
    s = _studies(ctx)
    wanted = {s["main"].uid, s["other"].uid}
    results = _search(ctx, "studies", [("StudyInstanceUID", "\\".join(sorted(wanted)))], "StudyInstanceUID=a\\b")
    _expect_set(ctx, uids(results, STUDY_UID), wanted, "UID list with backslashes")


@suite.check("match-date-range", "date ranges: closed, open-ended and up-to", "PS3.4 C.2.2.2.5")
def date_range(ctx: Context) -> None:
    s = _studies(ctx)
    a, b = s["main"].uid, s["other"].uid
    for value, expected in (("20240101-20241231", {a}), ("20240101-", {a}), ("-20231231", {b}),
                            ("20230610", {b})):
        results = _search(ctx, "studies", _ours(ctx) + [("StudyDate", value)], f"StudyDate={value}")
        _expect_set(ctx, uids(results, STUDY_UID), expected, f"StudyDate={value}")


@suite.check("match-time-range", "time range matching", "PS3.4 C.2.2.2.5")
def time_range(ctx: Context) -> None:
    s = _studies(ctx)
    results = _search(ctx, "studies", _ours(ctx) + [("StudyTime", "090000-100000")], "StudyTime=090000-100000")
    _expect_set(ctx, uids(results, STUDY_UID), {s["main"].uid}, "StudyTime range")


@suite.check("match-modalities-in-study", "ModalitiesInStudy matches any modality of the study",
             "PS3.18 Table 10.6.1-5 (study matching keys); PS3.4 C.2.2.2.1")
def modalities_in_study(ctx: Context) -> None:
    s = _studies(ctx)
    for modality, expected in (("IO", {s["main"].uid}), ("PX", {s["other"].uid})):
        results = _search(ctx, "studies", _ours(ctx) + [("ModalitiesInStudy", modality)],
                          f"ModalitiesInStudy={modality}")
        _expect_set(ctx, uids(results, STUDY_UID), expected, f"ModalitiesInStudy={modality}")


@suite.check("match-series-level", "matching on a series attribute within a study", "PS3.18 10.6.1 (/studies/{study}/series); Table 10.6.1-5")
def series_level(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    io_series = {i.series for i in a.instances if str(i.ds.Modality) == "IO"}
    results = _search(ctx, f"studies/{a.uid}/series", [("Modality", "IO")], "/studies/{s}/series?Modality=IO")
    _expect_set(ctx, uids(results, SERIES_UID), io_series, "Modality=IO")


@suite.check("match-instance-level", "matching on instance attributes (InstanceNumber, SOPInstanceUID)",
             "PS3.18 10.6.1 (.../instances); Table 10.6.1-5")
def instance_level(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = next(iter(a.series().items()))
    second = next(i for i in instances if int(i.ds.InstanceNumber) == 2)
    path = f"studies/{a.uid}/series/{series_uid}/instances"
    results = _search(ctx, path, [("InstanceNumber", "2")], "InstanceNumber=2")
    _expect_set(ctx, uids(results, SOP_UID), {second.sop}, "InstanceNumber=2")
    results = _search(ctx, path, [("SOPInstanceUID", second.sop)], "SOPInstanceUID=")
    _expect_set(ctx, uids(results, SOP_UID), {second.sop}, "SOPInstanceUID=")


@suite.check("fuzzymatching-parameter", "fuzzymatching=true and =false are accepted (OHIF always sends it)",
             "PS3.18 8.3.4 Table 8.3.4-1 (origin server: M); 8.3.4.2")
def fuzzy_parameter(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    for value in ("false", "true"):
        results = _search(ctx, "studies", [("PatientID", a.patient_id), ("fuzzymatching", value)],
                          f"fuzzymatching={value}")
        _expect_set(ctx, uids(results, STUDY_UID), {a.uid}, f"fuzzymatching={value}")


@suite.check("fuzzy-name-component", "fuzzymatching=true finds a patient by one name component, any case",
             "PS3.18 8.3.4.2 (fuzzy semantic matching of person names); OHIF (supportsFuzzyMatching)",
             level="interop")
def fuzzy_component(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    results = _search(ctx, "studies", [("PatientID", a.patient_id), ("PatientName", "anna"),
                                       ("fuzzymatching", "true")], "fuzzy PatientName=anna")
    _expect_set(ctx, uids(results, STUDY_UID), {a.uid}, "fuzzy matching on the given name")


@suite.check("percent-encoded-wildcard", "wildcards percent-encoded as dicomweb-client sends them (%2A) match",
             "RFC 3986 2.1 (percent-decoding); PS3.18 8.3.4.1")
def percent_encoded(ctx: Context) -> None:
    s = _studies(ctx)
    results = _search(ctx, "studies", _ours(ctx), "PatientName=prefix%2A", encoder=encode_python)
    _expect_set(ctx, uids(results, STUDY_UID), {s["main"].uid, s["other"].uid}, "PatientName=prefix%2A")


# --- includefield, computed attributes, paging ---------------------------------------------------

def _one(ctx: Context, pairs: list[tuple[str, str]], what: str, **kwargs) -> dict:
    a = _studies(ctx)["main"]
    results = _search(ctx, "studies", [("PatientID", a.patient_id)] + pairs, what, **kwargs)
    _expect_set(ctx, uids(results, STUDY_UID), {a.uid}, what)
    return results[0]


@suite.check("includefield-keyword", "includefield by keyword returns the attribute", "PS3.18 8.3.4.3")
def includefield_keyword(ctx: Context) -> None:
    result = _one(ctx, [("includefield", "StudyDescription")], "includefield=StudyDescription")
    ctx.expect(text(result, "00081030") == f"Conformance {ctx.data.token} CBCT",
               f"StudyDescription (0008,1030) is {text(result, '00081030')!r}")


@suite.check("includefield-tag", "includefield by tag returns the attribute", "PS3.18 8.3.4.3")
def includefield_tag(ctx: Context) -> None:
    result = _one(ctx, [("includefield", "00081030")], "includefield=00081030")
    ctx.expect(text(result, "00081030") == f"Conformance {ctx.data.token} CBCT",
               f"StudyDescription (0008,1030) is {text(result, '00081030')!r}")


@suite.check("includefield-list", "includefield as a comma list and repeated", "PS3.18 8.3.4.3 (1#attribute)")
def includefield_list(ctx: Context) -> None:
    for pairs in ([("includefield", "StudyDescription,PatientAge")],
                  [("includefield", "StudyDescription"), ("includefield", "00101010")]):
        result = _one(ctx, pairs, "includefield list", encoder=encode_literal)
        missing = [t for t in ("00081030", "00101010") if not values(result, t)]
        ctx.expect(not missing, f"includefield {pairs}: {', '.join(missing)} missing")


@suite.check("includefield-all", "includefield=all returns the study's other attributes", "PS3.18 8.3.4.3")
def includefield_all(ctx: Context) -> None:
    result = _one(ctx, [("includefield", "all")], "includefield=all")
    missing = [name for name, tag in (("StudyDescription", "00081030"), ("PatientAge", "00101010"))
               if not values(result, tag)]
    ctx.expect(not missing, f"includefield=all: {', '.join(missing)} missing")


@suite.check("computed-attributes", "computed counts and ModalitiesInStudy are right",
             "PS3.4 C.3.4 Table C.3-1; PS3.18 Tables 10.6.3-3, 10.6.3-4")
def computed(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    result = _one(ctx, [("includefield", "NumberOfStudyRelatedSeries,NumberOfStudyRelatedInstances,"
                                         "ModalitiesInStudy")], "computed study attributes", encoder=encode_literal)
    for tag, name, expected in (("00201206", "NumberOfStudyRelatedSeries", len(a.series())),
                                ("00201208", "NumberOfStudyRelatedInstances", len(a.instances))):
        got = first(result, tag)
        ctx.expect(got is not None and int(got) == expected, f"{name} is {got!r}, expected {expected}")
    modalities = set(values(result, "00080061"))
    ctx.expect(modalities == a.modalities, f"ModalitiesInStudy is {sorted(modalities)}, expected {sorted(a.modalities)}")
    series = _search(ctx, f"studies/{a.uid}/series", [("includefield", "NumberOfSeriesRelatedInstances")],
                     "series with NumberOfSeriesRelatedInstances")
    counts = {text(r, SERIES_UID): first(r, "00201209") for r in series}
    for series_uid, instances in a.series().items():
        got = counts.get(series_uid)
        ctx.expect(got is not None and int(got) == len(instances),
                   f"NumberOfSeriesRelatedInstances of {series_uid} is {got!r}, expected {len(instances)}")


@suite.check("limit-offset", "limit and offset page through the results", "PS3.18 8.3.4.4")
def limit_offset(ctx: Context) -> None:
    s = _studies(ctx)
    both = {s["main"].uid, s["other"].uid}
    first_page = _search(ctx, "studies", _ours(ctx) + [("limit", "1")], "limit=1")
    ctx.expect(len(first_page) == 1, f"limit=1 gave {len(first_page)} results")
    second_page = _search(ctx, "studies", _ours(ctx) + [("limit", "1"), ("offset", "1")], "limit=1&offset=1")
    ctx.expect(len(second_page) == 1, f"limit=1&offset=1 gave {len(second_page)} results")
    got = uids(first_page, STUDY_UID) + uids(second_page, STUDY_UID)
    _expect_set(ctx, got, both, "the two pages together")
    beyond = _search(ctx, "studies", _ours(ctx) + [("offset", "2")], "offset=2")
    ctx.expect(not beyond, f"offset=2 past the 2 matches gave {len(beyond)} results")


@suite.check("truncation-warning", "a page cut by limit says so in a Warning header (299)",
             "PS3.18 8.3.4.4 (Warning 299); clients page by it (OHIF, dicomweb-client)", level="interop")
def truncation_warning(ctx: Context) -> None:
    _studies(ctx)
    response = qido(ctx, "studies", _ours(ctx) + [("limit", "1")])
    expect_status(ctx, response, 200, "limit=1 of 2 matches")
    warning = response.headers.get("Warning", "")
    ctx.expect(warning.strip().startswith("299"), f"no Warning: 299 header on a truncated page (got {warning!r})")


@suite.check("empty-result", "a search matching nothing answers 204, or 200 with an empty array",
             "PS3.18 10.6.3 (status codes: 200/204)")
def empty(ctx: Context) -> None:
    _studies(ctx)
    response = qido(ctx, "studies", [("PatientID", f"CF-{ctx.data.token}-NOBODY")])
    ctx.expect(response.status_code in (200, 204), f"HTTP {response.status_code}, expected 204 or 200 []")
    results = qido_results(ctx, response, "search matching nothing")
    ctx.expect(results == [], f"{len(results)} results for a PatientID nobody has")


@suite.check("bad-parameter-400", "malformed query parameter values answer 400 (not a silently wider search)",
             "PS3.18 10.6.3 (400: errors in the request parameters); 8.3.4", level="interop")
def bad_parameters(ctx: Context) -> None:
    _studies(ctx)
    for pairs in ([("limit", "ten")], [("StudyDate", "2024-99-99x")], [("offset", "-3")]):
        response = qido(ctx, "studies", pairs)
        expect_status(ctx, response, 400, f"/studies?{pairs[0][0]}={pairs[0][1]}")
