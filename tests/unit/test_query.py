"""Matching keys → storage matches (build_match) and attribute names → tags (resolve_attribute)."""
from __future__ import annotations

import pytest

from storage.attributes import BY_KEYWORD, INDEXED
from gateway.errors import BadRequest
from gateway.services.query import build_match, resolve_attribute
from storage.query import Match


# --- resolve_attribute ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("PatientName", ("PatientName", "00100010")),
    ("StudyInstanceUID", ("StudyInstanceUID", "0020000D")),
    ("00100010", ("PatientName", "00100010")),
    ("0020000d", ("StudyInstanceUID", "0020000D")),  # hex digits in either case
    ("0020000D", ("StudyInstanceUID", "0020000D")),
    (" 00081030 ", ("StudyDescription", "00081030")),
    ("ModalitiesInStudy", ("ModalitiesInStudy", "00080061")),
    ("00091010", ("00091010", "00091010")),  # private tag: no keyword, kept as the tag
    ("BitsAllocated", ("BitsAllocated", "00280100")),
])
def test_resolve_attribute(name, expected):
    assert resolve_attribute(name) == expected


def test_every_indexed_attribute_resolves_both_ways():
    for attr in INDEXED:
        assert resolve_attribute(attr.keyword) == (attr.keyword, attr.tag)
        assert resolve_attribute(attr.tag) == (attr.keyword, attr.tag)


@pytest.mark.parametrize("name", ["PatientsName", "patientname", "0010,0010", "(0010,0010)", "0010001",
                                  "001000100", "", "limitt", "x00100010"])
def test_resolve_unknown_attribute(name):
    with pytest.raises(BadRequest) as info:
        resolve_attribute(name)
    assert repr(name) in info.value.message
    assert info.value.http_status == 400


# --- universal matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", [a.keyword for a in INDEXED])
@pytest.mark.parametrize("value", ["", "  ", "*"])
def test_universal_matching(keyword, value):
    assert build_match(keyword, value) is None
    assert build_match(keyword, value, fuzzy=True) is None


# --- dates and times -----------------------------------------------------------------------------


@pytest.mark.parametrize("keyword, value, expected", [
    ("StudyDate", "20240301", Match("StudyDate", "single", "20240301")),
    ("StudyDate", " 20240301 ", Match("StudyDate", "single", "20240301")),
    ("StudyDate", "20240101-20241231", Match("StudyDate", "range", ("20240101", "20241231"))),
    ("StudyDate", "20240101-20240101", Match("StudyDate", "range", ("20240101", "20240101"))),
    ("StudyDate", "20240101-", Match("StudyDate", "range", ("20240101", None))),
    ("StudyDate", "-20241231", Match("StudyDate", "range", (None, "20241231"))),
    ("PatientBirthDate", "19000101-19991231", Match("PatientBirthDate", "range", ("19000101", "19991231"))),
    ("SeriesDate", "20240229", Match("SeriesDate", "single", "20240229")),
    ("ContentDate", "-20200101", Match("ContentDate", "range", (None, "20200101"))),
    ("PerformedProcedureStepStartDate", "20240101-", Match("PerformedProcedureStepStartDate", "range",
                                                          ("20240101", None))),
])
def test_date(keyword, value, expected):
    assert build_match(keyword, value) == expected


@pytest.mark.parametrize("keyword, value, expected", [
    ("StudyTime", "101500", Match("StudyTime", "single", "101500")),
    ("StudyTime", "10", Match("StudyTime", "single", "10")),
    ("StudyTime", "1015", Match("StudyTime", "single", "1015")),
    ("StudyTime", "101500.123456", Match("StudyTime", "single", "101500.123456")),
    ("StudyTime", "10:15:00", Match("StudyTime", "single", "101500")),  # ACR-NEMA style colons
    ("StudyTime", "1000-1200", Match("StudyTime", "range", ("1000", "1200"))),
    ("StudyTime", "10:00-12:00", Match("StudyTime", "range", ("1000", "1200"))),
    ("StudyTime", "1000-", Match("StudyTime", "range", ("1000", None))),
    ("StudyTime", "-1200", Match("StudyTime", "range", (None, "1200"))),
    ("SeriesTime", "235959.999999", Match("SeriesTime", "single", "235959.999999")),
    ("ContentTime", "000000-", Match("ContentTime", "range", ("000000", None))),
    ("PerformedProcedureStepStartTime", "08-09", Match("PerformedProcedureStepStartTime", "range",
                                                        ("08", "09"))),
])
def test_time(keyword, value, expected):
    assert build_match(keyword, value) == expected


@pytest.mark.parametrize("keyword, value", [
    ("StudyDate", "2024-03-01"),  # ISO dates are not DICOM DA
    ("StudyDate", "2024030"),
    ("StudyDate", "202403011"),
    ("StudyDate", "abcdefgh"),
    ("StudyDate", "20241301"),  # month 13
    ("StudyDate", "20240230"),  # 30 February
    ("StudyDate", "20240100"),
    ("StudyDate", "-"),
    ("StudyDate", "20241231-20240101"),  # starts after it ends
    ("StudyDate", "20240101-2024"),
    ("StudyDate", "2024*"),
    ("PatientBirthDate", "1980"),
    ("StudyTime", "1"),
    ("StudyTime", "101"),
    ("StudyTime", "10150"),
    ("StudyTime", "1015000"),
    ("StudyTime", "101500."),
    ("StudyTime", "101500.1234567"),
    ("StudyTime", "ab"),
    ("StudyTime", "25"),  # hour 25
    ("StudyTime", "1075"),  # minute 75
    ("StudyTime", "101575"),  # second 75
    ("StudyTime", "1200-1000"),
    ("StudyTime", "-"),
    ("StudyTime", "10*"),
])
def test_bad_date_or_time(keyword, value):
    with pytest.raises(BadRequest) as info:
        build_match(keyword, value)
    assert keyword in info.value.message


# --- UIDs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
def test_uid_single(keyword):
    assert build_match(keyword, "1.2.840.10008.5.1.4.1.1.2") == Match(keyword, "single", "1.2.840.10008.5.1.4.1.1.2")


@pytest.mark.parametrize("value", ["1.2.3,1.2.4", "1.2.3\\1.2.4", " 1.2.3 , 1.2.4 ", "1.2.3,,1.2.4", "1.2.3\\1.2.4,"])
def test_uid_list(value):
    assert build_match("StudyInstanceUID", value) == Match("StudyInstanceUID", "uids", ("1.2.3", "1.2.4"))


def test_uid_list_of_one_is_single():
    assert build_match("SeriesInstanceUID", "1.2.3,") == Match("SeriesInstanceUID", "single", "1.2.3")


@pytest.mark.parametrize("value", ["1.2.abc", "1.2.3,1.2.x", "1.2.*", "1.2.?", "1-2-3", "1." + "2" * 64, ",", "\\",
                                   ", \\"])
def test_bad_uid(value):
    with pytest.raises(BadRequest) as info:
        build_match("StudyInstanceUID", value)
    assert "StudyInstanceUID" in info.value.message


# --- ModalitiesInStudy ----------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("CT", Match("ModalitiesInStudy", "single", "CT")),
    ("CT,MR", Match("ModalitiesInStudy", "uids", ("CT", "MR"))),
    ("CT\\MR", Match("ModalitiesInStudy", "uids", ("CT", "MR"))),
    ("IO, PX ,", Match("ModalitiesInStudy", "uids", ("IO", "PX"))),
])
def test_modalities_in_study(value, expected):
    assert build_match("ModalitiesInStudy", value) == expected


def test_modalities_in_study_without_values():
    with pytest.raises(BadRequest, match="ModalitiesInStudy"):
        build_match("ModalitiesInStudy", ",")


# --- integers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword, value, expected", [
    ("SeriesNumber", "2", "2"),
    ("SeriesNumber", " 12 ", "12"),
    ("InstanceNumber", "-1", "-1"),
    ("InstanceNumber", "+7", "+7"),
    ("NumberOfFrames", "600", "600"),
    ("Rows", "512", "512"),  # US
    ("Columns", "2048", "2048"),
    ("BitsAllocated", "16", "16"),
    ("NumberOfStudyRelatedSeries", "3", "3"),
    ("NumberOfStudyRelatedInstances", "40", "40"),
    ("NumberOfSeriesRelatedInstances", "1", "1"),
])
def test_integer(keyword, value, expected):
    assert build_match(keyword, value) == Match(keyword, "single", expected)


@pytest.mark.parametrize("keyword, value", [
    ("SeriesNumber", "abc"), ("SeriesNumber", "1.5"), ("SeriesNumber", "1e3"), ("InstanceNumber", "1,2"),
    ("Rows", "5?"), ("Columns", "1-2"), ("NumberOfFrames", "0x10"), ("BitsAllocated", "--8"),
])
def test_bad_integer(keyword, value):
    with pytest.raises(BadRequest) as info:
        build_match(keyword, value)
    assert keyword in info.value.message
    assert "integer" in info.value.message


# --- person names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, fuzzy, expected", [
    ("Doe^John", False, Match("PatientName", "single", "Doe^John")),
    ("Doe^John", True, Match("PatientName", "fuzzy", "Doe^John")),
    ("hong", True, Match("PatientName", "fuzzy", "hong")),
    ("洪^吉洞", True, Match("PatientName", "fuzzy", "洪^吉洞")),
    ("Hong^Gildong=洪^吉洞=홍^길동", False, Match("PatientName", "single", "Hong^Gildong=洪^吉洞=홍^길동")),
    ("Doe*", False, Match("PatientName", "wildcard", "Doe*")),
    ("Doe*", True, Match("PatientName", "wildcard", "Doe*")),  # explicit wildcards win over fuzzy
    ("*oe*", False, Match("PatientName", "wildcard", "*oe*")),
    ("D?e", True, Match("PatientName", "wildcard", "D?e")),
])
def test_person_name(value, fuzzy, expected):
    assert build_match("PatientName", value, fuzzy=fuzzy) == expected


def test_referring_physician_is_a_person_name():
    assert build_match("ReferringPhysicianName", "kim", fuzzy=True) == Match("ReferringPhysicianName", "fuzzy", "kim")


# --- other strings (LO, SH, CS) ------------------------------------------------------------------------


@pytest.mark.parametrize("keyword, value, fuzzy, expected_kind", [
    ("PatientID", "P-001", False, "single"),
    ("PatientID", "P-001", True, "single"),  # fuzzy applies to person names only
    ("PatientID", "P-*", False, "wildcard"),
    ("AccessionNumber", "ACC?1", False, "wildcard"),
    ("AccessionNumber", "A[1]", False, "single"),
    ("StudyID", "42", False, "single"),
    ("StudyDescription", "*pano*", True, "wildcard"),
    ("SeriesDescription", "Bitewing left", False, "single"),
    ("Modality", "IO", False, "single"),
    ("Modality", "I*", False, "wildcard"),
    ("PatientSex", "F", False, "single"),
    ("BodyPartExamined", "JAW", False, "single"),
])
def test_string(keyword, value, fuzzy, expected_kind):
    assert build_match(keyword, value, fuzzy=fuzzy) == Match(keyword, expected_kind, value)


def test_every_indexed_vr_is_covered_here():
    """A new VR in the index needs its own matching rules and tests."""
    assert {a.vr for a in BY_KEYWORD.values()} == {"LO", "PN", "DA", "CS", "UI", "TM", "SH", "IS", "US"}
