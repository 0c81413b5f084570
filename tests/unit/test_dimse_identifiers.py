"""Q/R identifiers ↔ the query model: parsing, response identifiers, the patient level, retrieve sets."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from auth.base import EMBEDDED_PRINCIPAL
from gateway.dimse import identifiers
from gateway.dimse.identifiers import IdentifierMismatch, parse, response, retrieve_records
from gateway.errors import BadRequest
from tests.data import sample_file as sample_file

# Some identifiers here are deliberately invalid; pydicom warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def _identifier(level: str | None, **keys) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# --- parse -------------------------------------------------------------------------------------

@pytest.mark.parametrize("level, model, expected", [
    ("PATIENT", "patient", "patient"), ("STUDY", "patient", "study"), ("STUDY", "study", "study"),
    ("SERIES", "study", "series"), ("IMAGE", "study", "instance"), ("image ", "study", "instance"),
])
def test_levels(level, model, expected):
    assert parse(_identifier(level), model).level == expected


@pytest.mark.parametrize("level, model, message", [
    (None, "study", "QueryRetrieveLevel (0008,0052) is missing"),
    ("FRAME", "study", "is not PATIENT, STUDY, SERIES or IMAGE"),
    ("PATIENT", "study", "Study Root model has no PATIENT level"),
])
def test_level_errors_are_a900(level, model, message):
    with pytest.raises(IdentifierMismatch) as info:
        parse(_identifier(level), model)
    assert message in info.value.message
    assert info.value.dimse_status == 0xA900


def test_keys_become_matching_strings_and_return_keys():
    ds = _identifier("SERIES", PatientName="SMI*^J?", StudyDate="20240101-20240131", Modality="",
                     SeriesInstanceUID=["1.2.3", "1.2.4"], InstanceAvailability="")
    ds.add_new(0x00091010, "LO", "private")
    ds.ReferencedStudySequence = [Dataset()]
    request = parse(ds, "study")
    assert request.filters == {"PatientName": "SMI*^J?", "StudyDate": "20240101-20240131", "Modality": "",
                               "SeriesInstanceUID": "1.2.3\\1.2.4", "00091010": "private",
                               "ReferencedStudySequence": ""}
    assert request.availability_requested
    assert "InstanceAvailability" not in request.filters
    assert request.value("SeriesInstanceUID") == "1.2.3\\1.2.4"


# --- response identifiers ----------------------------------------------------------------------

def test_response_has_exactly_the_requested_keys():
    request = parse(_identifier("STUDY", PatientName="", StudyInstanceUID="", AccessionNumber="",
                                ReferencedStudySequence=[], InstanceAvailability=""), "study")
    result = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00080050": {"vr": "SH"},  # no value stored
        "00201208": {"vr": "IS", "Value": [4]},  # not requested
    }
    ds = response(request, result, ae_title="GW")
    assert {e.keyword for e in ds} == {"QueryRetrieveLevel", "PatientName", "StudyInstanceUID", "AccessionNumber",
                                       "ReferencedStudySequence", "RetrieveAETitle", "InstanceAvailability"}
    assert ds.PatientName == "Doe^Jane" and ds.StudyInstanceUID == "1.2.3"
    assert ds.AccessionNumber in ("", None) and list(ds.ReferencedStudySequence) == []
    assert ds.RetrieveAETitle == "GW" and ds.InstanceAvailability == "ONLINE" and ds.QueryRetrieveLevel == "STUDY"


def test_response_character_set():
    request = parse(_identifier("STUDY", PatientName=""), "study")
    with_charset = {"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
                    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller"}]}}
    assert response(request, with_charset, ae_title="GW").SpecificCharacterSet == "ISO_IR 100"
    without = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller"}]}}
    assert response(request, without, ae_title="GW").SpecificCharacterSet == "ISO_IR 192"
    ascii_only = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Muller"}]}}
    assert "SpecificCharacterSet" not in response(request, ascii_only, ae_title="GW")


# --- the patient level and retrieve sets, through the one query path --------------------------

@pytest.fixture
def stored(app, tmp_path):
    """Patient P1 with two studies (2 + 1 instances), patient P2 with one."""
    services = app.extensions["gateway"]
    ids = {}
    study_a, series_a = generate_uid(), generate_uid()
    for key, pid, name, study, series in (("a1", "P1", "ONE^PATIENT", study_a, series_a),
                                          ("a2", "P1", "ONE^PATIENT", study_a, series_a),
                                          ("b1", "P1", "ONE^PATIENT", generate_uid(), generate_uid()),
                                          ("c1", "P2", "TWO^PATIENT", generate_uid(), generate_uid())):
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName = pid, name
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = tmp_path / f"{key}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with open(path, "rb") as fh:
            outcome = services.ingest.commit(services.ingest.stage(fh), principal=EMBEDDED_PRINCIPAL)
        assert outcome.ok, outcome.error
        ids[key] = (study, series, ds.SOPInstanceUID)
    return services, ids


def test_patient_level_search(stored):
    services, _ids = stored
    found = services.query.search(EMBEDDED_PRINCIPAL, "patient", {"PatientName": "one*", "PatientID": "",
                                                                   "NumberOfPatientRelatedStudies": ""})
    (patient,) = found.results
    assert patient["00100020"]["Value"] == ["P1"]
    assert patient["00100010"]["Value"][0]["Alphabetic"] == "ONE^PATIENT"
    assert patient["00201200"]["Value"] == [2]  # studies
    assert patient["00201202"]["Value"] == [2]  # series
    assert patient["00201204"]["Value"] == [3]  # instances
    everyone = services.query.search(EMBEDDED_PRINCIPAL, "patient", {})
    assert [p["00100020"]["Value"][0] for p in everyone.results] == ["P1", "P2"]
    other = services.query.search(EMBEDDED_PRINCIPAL.system("other-clinic"), "patient", {})
    assert other.results == []


def test_patient_level_ignores_keys_of_other_levels(stored):
    services, _ids = stored
    found = services.query.search(EMBEDDED_PRINCIPAL, "patient", {"PatientID": "P2", "Modality": "CT"})
    assert len(found.results) == 1 and found.ignored == ["Modality"]


def _records(services, level, model="study", **keys):
    return retrieve_records(services, EMBEDDED_PRINCIPAL, parse(_identifier(level, **keys), model))


def test_retrieve_sets(stored):
    services, ids = stored
    by_sop = lambda records: sorted(r.sop_uid for r in records)  # noqa: E731
    sops = {k: v[2] for k, v in ids.items()}
    assert by_sop(_records(services, "PATIENT", "patient", PatientID="P1")) == sorted([sops["a1"], sops["a2"], sops["b1"]])
    assert by_sop(_records(services, "STUDY", StudyInstanceUID=[ids["a1"][0], ids["c1"][0]])) == \
        sorted([sops["a1"], sops["a2"], sops["c1"]])
    assert by_sop(_records(services, "STUDY", "patient", PatientID="P2", StudyInstanceUID=ids["a1"][0])) == []
    assert by_sop(_records(services, "SERIES", SeriesInstanceUID=ids["b1"][1])) == [sops["b1"]]
    assert by_sop(_records(services, "IMAGE", SOPInstanceUID=[sops["a2"], sops["c1"]])) == sorted([sops["a2"], sops["c1"]])
    assert _records(services, "STUDY", StudyInstanceUID="1.2.3.4.5") == []


@pytest.mark.parametrize("level, keys", [("STUDY", {}), ("SERIES", {"StudyInstanceUID": "1.2"}),
                                         ("IMAGE", {"SOPInstanceUID": "1.2*"})])
def test_retrieve_needs_the_unique_key(stored, level, keys):
    services, _ids = stored
    with pytest.raises(IdentifierMismatch, match="needs"):
        _records(services, level, **keys)


def test_bad_matching_value_is_c000(stored):
    services, _ids = stored
    request = parse(_identifier("STUDY", StudyDate="2024-13-45"), "study")
    with pytest.raises(BadRequest) as info:
        list(identifiers.search_pages(services.query.search, EMBEDDED_PRINCIPAL, request.level, request.filters))
    assert info.value.dimse_status == 0xC000
