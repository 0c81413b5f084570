"""QIDO-RS against a real ``gateway serve`` process, with data stored through STOW-RS.

Every study of this module has a PatientID starting with ``QIDOE2E-`` and UIDs
under a root of its own, and every query is scoped by them, so other end-to-end
modules sharing the session server do not change the answers.
"""
from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from tests.helpers import multipart_body, multipart_content_type

pytestmark = pytest.mark.e2e

PREFIX = "QIDOE2E-"
SCOPE = {"PatientID": PREFIX + "*"}
ROOT = f"2.25.{uuid.uuid4().int % 10**20 + 10**19}"  # this module's own UIDs
KOREAN = "Hong^Gildong=洪^吉洞=홍^길동"  # PS3.5 H.3.1, encoded below in ISO 2022 IR 149
KOREAN_UTF8 = "Kim^Minjun=金^民俊=김^민준"
INSTITUTION = "QIDO E2E Dental Clinic"

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "IO": "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray Image Storage - For Presentation
    "PX": "1.2.840.10008.5.1.4.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR (no pixel data)
}
SHAPES = {"CT": (4, 4, 16), "IO": (6, 8, 8), "PX": (8, 16, 8)}  # rows, columns, bits allocated


@dataclass
class Study:
    key: str
    patient_id: str
    name: str
    charset: str | list[str]
    date: str | None
    time: str | None
    series: list[tuple[str, int]]  # (modality, number of instances), numbered 1..n
    accession: str = ""
    referring: str = ""
    birth_date: str = ""
    uid: str = ""
    series_uids: list[str] = field(default_factory=list)
    sop_uids: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        self.uid = f"{ROOT}.{ord(self.key)}"
        self.accession = self.accession or f"QE2E-{self.key}"
        self.series_uids = [f"{self.uid}.{n}" for n in range(1, len(self.series) + 1)]
        self.sop_uids = [[f"{s}.{i}" for i in range(1, count + 1)]
                         for s, (_, count) in zip(self.series_uids, self.series)]

    @property
    def modalities(self) -> list[str]:
        return sorted({m for m, _ in self.series})

    @property
    def instance_count(self) -> int:
        return sum(count for _, count in self.series)


# Newest first: D, B, A, C, then E without a StudyDate.
A = Study("A", PREFIX + "001", "Doe^John", "ISO_IR 192", "20230115", "101500", [("CT", 2), ("SR", 1)],
          referring="Lee^Referrer", birth_date="19800101")
B = Study("B", PREFIX + "002", KOREAN, ["", "ISO 2022 IR 149"], "20240301", "143000", [("IO", 3), ("PX", 1)],
          birth_date="19751224")
C = Study("C", PREFIX + "003", "Müller^Jürgen", "ISO_IR 192", "20220610", "080000", [("CT", 1)])
D = Study("D", PREFIX + "004", KOREAN_UTF8, "ISO_IR 192", "20240302", "093000", [("PX", 1)])
E = Study("E", PREFIX + "005", "Smith^Anna^Marie", "ISO_IR 192", None, None, [("IO", 2)])
STUDIES = [A, B, C, D, E]
ORDER = [D, B, A, C, E]


def _dataset(study: Study, series_index: int, instance_index: int) -> bytes:
    modality, _ = study.series[series_index]
    sop_uid = study.sop_uids[series_index][instance_index]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = study.charset
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = study.series_uids[series_index]
    ds.PatientName = study.name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = "O"
    ds.PatientAge = "044Y"
    if study.date:
        ds.StudyDate = study.date
    if study.time:
        ds.StudyTime = study.time
    ds.AccessionNumber = study.accession
    ds.ReferringPhysicianName = study.referring
    ds.StudyID = study.key
    ds.StudyDescription = f"QIDO e2e study {study.key}"
    ds.InstitutionName = INSTITUTION
    ds.Modality = modality
    ds.SeriesNumber = series_index + 1
    ds.SeriesDescription = f"{modality} series"
    ds.InstanceNumber = instance_index + 1
    if modality in SHAPES:
        rows, columns, bits = SHAPES[modality]
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        dtype = np.uint16 if bits == 16 else np.uint8
        ds.PixelData = np.arange(rows * columns, dtype=dtype).reshape(rows, columns).tobytes()
    else:
        ds.ContentDate = study.date or "20240101"
        ds.ContentTime = "120000"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def qido(server):
    """Stores this module's studies once through STOW-RS; returns the QIDO base URL."""
    parts = [_dataset(study, s, i) for study in STUDIES for s, (_, count) in enumerate(study.series)
             for i in range(count)]
    boundary = f"qidoe2e-{uuid.uuid4().hex}"
    global http
    http = server.http
    response = http.post(f"{server.dicomweb}/studies", data=multipart_body(parts, boundary), timeout=60,
                         headers={"Content-Type": multipart_content_type(boundary, quote_boundary=True),
                                  "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == len(parts)
    return server.dicomweb


# The shared server's authenticated session (admin of clinic "default"), set by the qido fixture.
http: requests.Session


def get(base: str, path: str, params=None, **kw) -> requests.Response:
    headers = kw.pop("headers", {"Accept": "application/dicom+json"})
    return http.get(base + path, params=params, headers=headers, timeout=30, **kw)


def search(base: str, path: str, params=None) -> list[dict]:
    response = get(base, path, params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    return response.json()


def value(item: dict, tag: str):
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def values(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


def study_keys(items: list[dict]) -> list[str]:
    """The keys of this module's studies in the answer, in answer order."""
    by_uid = {s.uid: s.key for s in STUDIES}
    return [by_uid[value(i, "0020000D")] for i in items if value(i, "0020000D") in by_uid]


def scoped(**params) -> dict:
    return {**SCOPE, **params}


# --- the six endpoints -------------------------------------------------------------------------------


def test_studies(qido):
    items = search(qido, "/studies", SCOPE)
    assert study_keys(items) == [s.key for s in ORDER]
    first = items[0]
    for tag in ("00080020", "00080030", "00080050", "00080061", "00080090", "00100010", "00100020",
                "00100030", "00100040", "0020000D", "00200010", "00081030", "00201206", "00201208"):
        assert tag in first, tag  # PS3.18 Table 10.6.1-5 and the computed counters
    assert value(first, "00100020") == D.patient_id
    assert value(first, "00080020") == "20240302"
    assert first["00080020"]["vr"] == "DA"


def test_study_series(qido):
    items = search(qido, f"/studies/{A.uid}/series")
    assert [value(i, "0020000E") for i in items] == A.series_uids
    assert [value(i, "00080060") for i in items] == ["CT", "SR"]
    assert [value(i, "00200011") for i in items] == [1, 2]
    assert [value(i, "00201209") for i in items] == [2, 1]
    assert all(value(i, "0020000D") == A.uid for i in items)
    assert value(items[0], "0008103E") == "CT series"


def test_series(qido):
    items = search(qido, "/series", SCOPE)
    expected = {uid for s in STUDIES for uid in s.series_uids}
    assert {value(i, "0020000E") for i in items} == expected
    assert len(items) == len(expected)
    assert {value(i, "0020000D") for i in items} == {s.uid for s in STUDIES}
    ct = search(qido, "/series", scoped(Modality="CT"))
    assert {value(i, "0020000E") for i in ct} == {A.series_uids[0], C.series_uids[0]}


def test_series_instances(qido):
    items = search(qido, f"/studies/{B.uid}/series/{B.series_uids[0]}/instances")
    assert [value(i, "00080018") for i in items] == B.sop_uids[0]
    assert [value(i, "00200013") for i in items] == [1, 2, 3]
    first = items[0]
    assert value(first, "00080016") == SOP_CLASSES["IO"]
    assert (value(first, "00280010"), value(first, "00280011"), value(first, "00280100")) == (6, 8, 8)
    assert value(first, "0020000D") == B.uid and value(first, "0020000E") == B.series_uids[0]


def test_number_of_frames_of_single_frame_images(qido):
    items = search(qido, f"/studies/{B.uid}/series/{B.series_uids[0]}/instances")
    assert [value(i, "00280008") for i in items] == [1, 1, 1]


def test_study_instances(qido):
    items = search(qido, f"/studies/{B.uid}/instances")
    assert [value(i, "00080018") for i in items] == B.sop_uids[0] + B.sop_uids[1]
    assert [value(i, "0020000E") for i in items] == [B.series_uids[0]] * 3 + [B.series_uids[1]]


def test_instances(qido):
    items = search(qido, "/instances", SCOPE)
    expected = {uid for s in STUDIES for series in s.sop_uids for uid in series}
    assert {value(i, "00080018") for i in items} == expected and len(items) == len(expected)
    sr = [i for i in items if value(i, "00080016") == SOP_CLASSES["SR"]]
    assert [value(i, "00080018") for i in sr] == A.sop_uids[1]
    assert "00280010" not in sr[0] or "Value" not in sr[0]["00280010"]  # no pixels, no Rows


def test_path_scope_excludes_other_studies(qido):
    assert search(qido, f"/studies/{A.uid}/series/{B.series_uids[0]}/instances") == []
    assert search(qido, f"/studies/{ROOT}.999/series") == []


# --- matching -------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, expected", [
    ({"PatientID": B.patient_id}, ["B"]),
    ({"00080050": "QE2E-C"}, ["C"]),  # by tag
    ({"AccessionNumber": "QE2E-A"}, ["A"]),
    ({"StudyInstanceUID": D.uid}, ["D"]),
    ({"StudyID": "E"}, ["E"]),
    ({"PatientName": "Doe^John"}, ["A"]),
    ({"PatientBirthDate": "19751224"}, ["B"]),
    ({"StudyDate": "20230115"}, ["A"]),
], ids=str)
def test_single_value(qido, params, expected):
    assert study_keys(search(qido, "/studies", scoped(**params))) == expected


def test_same_key_by_keyword_and_tag_is_rejected(qido):
    response = get(qido, "/studies", {"PatientID": C.patient_id, "00100020": C.patient_id})
    assert response.status_code == 400
    assert "PatientID" in response.json()["message"]


def test_universal_matching_returns_the_attribute(qido):
    items = search(qido, "/studies", scoped(StudyDescription="", InstitutionName=""))
    assert study_keys(items) == [s.key for s in ORDER]
    assert value(items[0], "00081030") == "QIDO e2e study D"
    assert value(items[0], "00080080") == INSTITUTION  # asked for by an empty matching key


@pytest.mark.parametrize("params, expected", [
    ({"PatientID": PREFIX + "00?"}, ["D", "B", "A", "C", "E"]),
    ({"PatientName": "Doe*"}, ["A"]),
    ({"PatientName": "*ller*"}, ["C"]),
    ({"PatientName": "M?ller*"}, ["C"]),
    ({"PatientName": "*^anna*"}, ["E"]),  # person names match case-insensitively
    ({"PatientName": "洪*"}, ["B"]),
    ({"AccessionNumber": "QE2E-?"}, ["D", "B", "A", "C", "E"]),
    ({"StudyDescription": "*study [AB]"}, []),  # brackets are not a character class
], ids=str)
def test_wildcard(qido, params, expected):
    assert study_keys(search(qido, "/studies", scoped(**params))) == expected


def test_percent_encoded_wildcard(qido):
    # dicomweb-client and browsers send '*' as %2A; both spellings mean the same.
    literal = get(qido, f"/studies?PatientID={PREFIX}*&PatientName=Doe*")
    encoded = get(qido, f"/studies?PatientID={PREFIX}%2A&PatientName=Doe%2a")
    assert literal.status_code == encoded.status_code == 200
    assert study_keys(literal.json()) == study_keys(encoded.json()) == ["A"]
    qmark = get(qido, f"/studies?PatientID={PREFIX}00%3F&PatientName=M%3Fller%5E%2A")
    assert study_keys(qmark.json()) == ["C"]


@pytest.mark.parametrize("separator", [",", "\\"])
def test_uid_list(qido, separator):
    items = search(qido, "/studies", {"StudyInstanceUID": separator.join([A.uid, C.uid, f"{ROOT}.999"])})
    assert study_keys(items) == ["A", "C"]
    series = search(qido, "/series", {"SeriesInstanceUID": separator.join([B.series_uids[1], E.series_uids[0]])})
    assert {value(i, "0020000E") for i in series} == {B.series_uids[1], E.series_uids[0]}
    sops = search(qido, f"/studies/{B.uid}/instances", {"SOPInstanceUID": separator.join(B.sop_uids[0][:2])})
    assert [value(i, "00080018") for i in sops] == B.sop_uids[0][:2]


@pytest.mark.parametrize("dates, expected", [
    ("20230101-20231231", ["A"]),
    ("20230115-20240301", ["B", "A"]),
    ("20240101-", ["D", "B"]),
    ("-20221231", ["C"]),
    ("19000101-", ["D", "B", "A", "C"]),  # a study without a date is outside every range
], ids=str)
def test_date_range(qido, dates, expected):
    assert study_keys(search(qido, "/studies", scoped(StudyDate=dates))) == expected


@pytest.mark.parametrize("times, expected", [
    ("0800-1100", ["D", "A", "C"]),
    ("101500-101500", ["A"]),
    ("1400-", ["B"]),
    ("-0800", ["C"]),
    ("14", ["B"]),
], ids=str)
def test_time_range(qido, times, expected):
    assert study_keys(search(qido, "/studies", scoped(StudyTime=times))) == expected


@pytest.mark.parametrize("name, expected", [
    ("gil", ["B"]),  # prefix of the given name
    ("GILD", ["B"]),  # case-insensitive
    ("hong gil", ["B"]),
    ("吉", ["B"]),  # ideographic group
    ("길동", ["B"]),  # phonetic group
    ("민", ["D"]),
    ("jür", ["C"]),
    ("marie", ["E"]),  # middle name
    ("j", ["A", "C"]),
    ("ong", []),  # not the start of any component
], ids=str)
def test_fuzzy_matching(qido, name, expected):
    assert study_keys(search(qido, "/studies", scoped(PatientName=name, fuzzymatching="true"))) == expected


def test_fuzzy_matching_false_is_exact(qido):
    assert study_keys(search(qido, "/studies", scoped(PatientName="gil", fuzzymatching="false"))) == []
    assert study_keys(search(qido, "/studies", scoped(PatientName="doe^john", fuzzymatching="false"))) == ["A"]
    assert study_keys(search(qido, "/studies", scoped(PatientName="Doe^John"))) == ["A"]


def test_fuzzy_matching_on_referring_physician(qido):
    items = search(qido, "/studies", scoped(ReferringPhysicianName="lee", fuzzymatching="true"))
    assert study_keys(items) == ["A"]


@pytest.mark.parametrize("modalities, expected", [
    ("IO", ["B", "E"]),
    ("SR,PX", ["D", "B", "A"]),
    ("SR\\PX", ["D", "B", "A"]),
    ("MR", []),
], ids=str)
def test_modalities_in_study(qido, modalities, expected):
    assert study_keys(search(qido, "/studies", scoped(ModalitiesInStudy=modalities))) == expected


def test_integer_and_instance_attributes(qido):
    items = search(qido, "/series", scoped(SeriesNumber="2"))
    assert {value(i, "0020000E") for i in items} == {A.series_uids[1], B.series_uids[1]}
    items = search(qido, "/instances", scoped(InstanceNumber="3"))
    assert [value(i, "00080018") for i in items] == [B.sop_uids[0][2]]
    items = search(qido, "/instances", scoped(Rows="8", Columns="16"))
    assert {value(i, "00080018") for i in items} == {B.sop_uids[1][0], D.sop_uids[0][0]}
    assert study_keys(search(qido, "/studies", scoped(NumberOfStudyRelatedInstances="4"))) == ["B"]


# --- computed attributes -------------------------------------------------------------------------


def test_computed_study_attributes(qido):
    items = {value(i, "0020000D"): i for i in search(qido, "/studies", SCOPE)}
    for study in STUDIES:
        item = items[study.uid]
        assert value(item, "00201206") == len(study.series), study.key
        assert value(item, "00201208") == study.instance_count, study.key
        assert values(item, "00080061") == study.modalities, study.key
        assert item["00080061"]["vr"] == "CS"


def test_computed_series_attribute(qido):
    items = {value(i, "0020000E"): i for i in search(qido, "/series", SCOPE)}
    for study in STUDIES:
        for uid, (_, count) in zip(study.series_uids, study.series):
            assert value(items[uid], "00201209") == count


def test_study_counter_at_series_level(qido):
    items = search(qido, f"/studies/{A.uid}/series", {"includefield": "NumberOfStudyRelatedInstances"})
    assert [value(i, "00201208") for i in items] == [3, 3]


# --- includefield --------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "includefield=InstitutionName",
    "includefield=00080080",
    "includefield=InstitutionName,PatientAge",
    "includefield=00080080,00101010",
    "includefield=InstitutionName&includefield=00101010",
], ids=str)
def test_includefield(qido, query):
    items = get(qido, f"/studies?PatientID={D.patient_id}&{query}").json()
    assert len(items) == 1
    assert value(items[0], "00080080") == INSTITUTION
    if "PatientAge" in query or "00101010" in query:
        assert value(items[0], "00101010") == "044Y"


def test_without_includefield_only_default_attributes(qido):
    [item] = search(qido, "/studies", {"PatientID": D.patient_id})
    assert "00080080" not in item and "00101010" not in item


def test_includefield_all(qido):
    [study] = search(qido, "/studies", {"PatientID": D.patient_id, "includefield": "all"})
    assert value(study, "00080080") == INSTITUTION
    assert value(study, "00101010") == "044Y"
    assert value(study, "00201208") == 1
    [instance] = search(qido, f"/studies/{D.uid}/instances", {"includefield": "all"})
    assert value(instance, "00280004") == "MONOCHROME2"  # from the instance's own header
    assert value(instance, "00280010") == 8
    assert value(instance, "0008103E") == "PX series"
    assert "7FE00010" not in instance  # never the pixel data


def test_includefield_at_instance_level(qido):
    [instance] = search(qido, f"/studies/{D.uid}/instances", {"includefield": "PhotometricInterpretation"})
    assert value(instance, "00280004") == "MONOCHROME2"


def test_unknown_includefield_is_rejected(qido):
    response = get(qido, "/studies", {"includefield": "NoSuchKeyword"})
    assert response.status_code == 400
    assert "NoSuchKeyword" in response.text


# --- paging ----------------------------------------------------------------------------------------


def test_limit_and_offset(qido):
    pages = []
    for offset in (0, 2, 4):
        response = get(qido, "/studies", scoped(limit=2, offset=offset))
        assert response.status_code == 200
        pages.append((study_keys(response.json()), response.headers.get("Warning", "")))
    assert [keys for keys, _ in pages] == [["D", "B"], ["A", "C"], ["E"]]
    assert pages[0][1].startswith("299 ") and pages[1][1].startswith("299 ")
    assert "Additional results" in pages[0][1]
    assert pages[2][1] == ""  # the last page is complete


def test_no_warning_when_everything_fits(qido):
    response = get(qido, "/studies", scoped(limit=5))
    assert study_keys(response.json()) == [s.key for s in ORDER]
    assert "Warning" not in response.headers


def test_limit_above_the_maximum_is_cut_with_a_warning(qido):
    response = get(qido, "/studies", scoped(limit=10**6))  # dicomweb.qido_max_limit is 10000
    assert response.status_code == 200
    assert study_keys(response.json()) == [s.key for s in ORDER]
    assert response.headers["Warning"].startswith("299 ")


def test_limit_at_instance_level(qido):
    response = get(qido, f"/studies/{B.uid}/instances", {"limit": 3, "offset": 1})
    assert [value(i, "00080018") for i in response.json()] == B.sop_uids[0][1:] + B.sop_uids[1]
    assert "Warning" not in response.headers
    response = get(qido, f"/studies/{B.uid}/instances", {"limit": 3})
    assert [value(i, "00080018") for i in response.json()] == B.sop_uids[0]
    assert response.headers["Warning"].startswith("299 ")


@pytest.mark.parametrize("params", [{"limit": "abc"}, {"limit": "-1"}, {"offset": "x"}, {"limit": "0"}], ids=str)
def test_bad_paging(qido, params):
    response = get(qido, "/studies", scoped(**params))
    assert response.status_code == 400
    assert next(iter(params)) in response.json()["message"]


# --- study list -------------------------------------------------------------------------------------


def test_study_without_date_in_unfiltered_list(qido):
    keys = study_keys(search(qido, "/studies"))
    assert keys == [s.key for s in ORDER]  # all of them, E (no StudyDate) after every dated one


def test_ohif_study_list(qido):
    query = ("/studies?PatientName=*gildong*&StudyDate=20240101-20241231&limit=101&offset=0"
             "&fuzzymatching=false&includefield=00081030,00080060,00080090,00100030")
    response = get(qido, query)
    assert response.status_code == 200, response.text
    assert "Warning" not in response.headers
    items = [i for i in response.json() if (value(i, "00100020") or "").startswith(PREFIX)]
    assert study_keys(items) == ["B"]
    [item] = items
    assert value(item, "00081030") == "QIDO e2e study B"
    assert value(item, "00100030") == "19751224"
    assert "00080090" in item
    assert values(item, "00080061") == ["IO", "PX"]

    # "n" is in Kim^Minjun and Hong^Gildong; Doe^John and Smith^Anna^Marie are outside the dates.
    response = get(qido, query.replace("*gildong*", "*n*"))
    assert study_keys(response.json()) == ["D", "B"]


def test_ohif_study_list_is_case_insensitive_on_names(qido):
    response = get(qido, "/studies?PatientName=*MÜLLER*&limit=101&offset=0&fuzzymatching=false")
    assert study_keys(response.json()) == ["C"]


# --- character sets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("study, expected", [
    (B, {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}),
    (D, {"Alphabetic": "Kim^Minjun", "Ideographic": "金^民俊", "Phonetic": "김^민준"}),
    (C, {"Alphabetic": "Müller^Jürgen"}),
], ids=lambda s: getattr(s, "key", None))
def test_person_name_groups_round_trip(qido, study, expected):
    for path in ("/studies", "/series", "/instances"):
        items = search(qido, path, {"PatientID": study.patient_id, "includefield": "PatientName"})
        assert items
        for item in items:
            assert item["00100010"] == {"vr": "PN", "Value": [expected]}, path


def test_response_is_utf8_json(qido):
    response = get(qido, "/studies", {"PatientID": B.patient_id})
    raw = response.content
    assert "洪^吉洞".encode("utf-8") in raw or b"\\u6d2a" in raw
    assert response.json()[0]["00100010"]["Value"][0]["Ideographic"] == "洪^吉洞"


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/studies", "/series", "/instances", f"/studies/{A.uid}/series",
                                  f"/studies/{A.uid}/instances"])
def test_unknown_parameter(qido, path):
    response = get(qido, path, {"Foo": "bar"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 400
    assert "Foo" in body["message"]


@pytest.mark.parametrize("params, name", [
    ({"StudyDate": "2024-03-01"}, "StudyDate"),
    ({"StudyDate": "20241301"}, "StudyDate"),
    ({"StudyDate": "20241231-20240101"}, "StudyDate"),
    ({"StudyTime": "2561"}, "StudyTime"),
    ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
    ({"SeriesNumber": "two"}, "SeriesNumber"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
], ids=str)
def test_malformed_value(qido, params, name):
    path = "/series" if "SeriesNumber" in params else "/studies"
    response = get(qido, path, scoped(**params))
    assert response.status_code == 400
    assert name in response.json()["message"]


def test_empty_result(qido):
    response = get(qido, "/studies", {"PatientID": PREFIX + "NOBODY"})
    assert response.status_code == 200
    assert response.json() == []
    assert "Warning" not in response.headers


def test_attribute_of_a_lower_level_is_ignored_with_a_warning(qido):
    response = get(qido, "/studies", scoped(Modality="CT"))
    assert response.status_code == 200
    assert study_keys(response.json()) == [s.key for s in ORDER]
    assert "Modality" in response.headers["Warning"]


@pytest.mark.parametrize("accept", ["application/dicom+xml", "text/html", "application/dicom"])
def test_not_acceptable(qido, accept):
    response = get(qido, "/studies", SCOPE, headers={"Accept": accept})
    assert response.status_code == 406


@pytest.mark.parametrize("accept", ["application/json", "*/*", "application/*",
                                    "application/dicom+json; q=0.9, application/dicom+xml", None])
def test_acceptable(qido, accept):
    response = get(qido, "/studies", SCOPE, headers={"Accept": accept})  # None: no Accept header
    assert response.status_code == 200
    assert study_keys(response.json()) == [s.key for s in ORDER]


# --- dicomweb-client --------------------------------------------------------------------------------


def test_dicomweb_client(qido):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=qido, headers={"Authorization": http.headers["Authorization"]})
    studies = client.search_for_studies(search_filters={"PatientID": PREFIX + "*"})
    assert study_keys(studies) == [s.key for s in ORDER]

    fuzzy = client.search_for_studies(search_filters={"PatientID": PREFIX + "*", "PatientName": "gil"},
                                      fuzzymatching=True)
    assert study_keys(fuzzy) == ["B"]
    exact = client.search_for_studies(search_filters={"PatientID": PREFIX + "*", "PatientName": "gil"},
                                      fuzzymatching=False)
    assert exact == []

    paged = client.search_for_studies(search_filters={"PatientID": PREFIX + "*"}, limit=2, offset=1)
    assert study_keys(paged) == ["B", "A"]
    ranged = client.search_for_studies(search_filters={"PatientID": PREFIX + "*", "StudyDate": "20240101-"},
                                       fields=["InstitutionName"])
    assert study_keys(ranged) == ["D", "B"]
    assert all(value(s, "00080080") == INSTITUTION for s in ranged)

    series = client.search_for_series(study_instance_uid=A.uid)
    assert [value(s, "0020000E") for s in series] == A.series_uids
    instances = client.search_for_instances(study_instance_uid=B.uid, series_instance_uid=B.series_uids[0])
    assert [value(i, "00080018") for i in instances] == B.sop_uids[0]
