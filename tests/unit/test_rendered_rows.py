"""Search results as DICOM JSON text (``as_json``), kept per row and shape (gateway.services.rendered_rows):
the same text as the dictionaries, never stale, never another clinic's."""
from __future__ import annotations

import io
import json

import pytest
from pydicom.uid import generate_uid

from auth.base import Principal
from gateway.services import Services
from gateway.services.rendered_rows import MAX_ITEM_CHARS, RenderedRows
from tests.services import dicom_instance

ROOT = "http://gw.example/dicom-web"


def doctor(clinic: str) -> Principal:
    return Principal("dr", clinic, frozenset({"doctor"}))


@pytest.fixture
def services(settings):
    services = Services.build(settings, plugins=False)
    yield services
    services.close()


def store(services, clinic: str, study: str, series: str, *, patient: str) -> None:
    data = dicom_instance(study, series, generate_uid(), size=4, patient=patient)
    outcome = services.ingest.commit(services.ingest.stage(io.BytesIO(data)), principal=doctor(clinic))
    assert outcome.ok, outcome.error


def texts(services, principal, level, filters=None, **kwargs) -> list[dict]:
    found = services.query.search(principal, level, filters or {}, as_json=True, retrieve_root=ROOT, **kwargs)
    assert all(isinstance(text, str) for text in found.results)
    return [json.loads(text) for text in found.results]


@pytest.mark.parametrize("level, include", [("study", ["00081030", "00080060"]), ("series", []),
                                            ("instance", []), ("instance", "all")])
def test_text_is_the_dictionaries_with_retrieve_urls(services, level, include):
    study, series = generate_uid(), generate_uid()
    store(services, "A", study, series, patient="Kim^Minjun")
    store(services, "A", study, series, patient="Kim^Minjun")
    principal = doctor("A")
    plain = services.query.search(principal, level, {"StudyInstanceUID": study}, include=include).results
    first = texts(services, principal, level, {"StudyInstanceUID": study}, include=include)
    again = texts(services, principal, level, {"StudyInstanceUID": study}, include=include)  # kept texts
    assert first == again
    assert len(first) == len(plain) > 0
    for result, text in zip(plain, first):
        url = text.pop("00081190")["Value"][0]
        assert text == result
        assert url.startswith(f"{ROOT}/studies/{study}")
        if level != "study":
            assert f"/series/{series}" in url


def test_a_changed_study_is_rendered_again(services):
    study, series = generate_uid(), generate_uid()
    store(services, "A", study, series, patient="Kim^Minjun")
    (before,) = texts(services, doctor("A"), "study", {"StudyInstanceUID": study})
    assert before["00201208"]["Value"] == [1]
    store(services, "A", study, generate_uid(), patient="Kim^Minjun")
    (after,) = texts(services, doctor("A"), "study", {"StudyInstanceUID": study})
    assert (after["00201206"]["Value"], after["00201208"]["Value"]) == ([2], [2])


def test_each_clinic_sees_its_own_rows(services):
    study, series = generate_uid(), generate_uid()  # the same UIDs in two clinics
    store(services, "A", study, series, patient="Alpha^Ann")
    store(services, "B", study, series, patient="Beta^Bob")
    for _ in range(2):  # the second round is served from the kept texts
        (a,) = texts(services, doctor("A"), "study", {"StudyInstanceUID": study})
        (b,) = texts(services, doctor("B"), "study", {"StudyInstanceUID": study})
        assert a["00100010"]["Value"][0]["Alphabetic"] == "Alpha^Ann"
        assert b["00100010"]["Value"][0]["Alphabetic"] == "Beta^Bob"
    assert texts(services, doctor("C"), "study", {"StudyInstanceUID": study}) == []


def test_the_retrieve_root_is_part_of_the_shape(services):
    study = generate_uid()
    store(services, "A", study, generate_uid(), patient="Kim^Minjun")
    for root in ("http://one.example/dicom-web", "http://two.example/dicom-web"):
        (found,) = services.query.search(doctor("A"), "study", {"StudyInstanceUID": study}, as_json=True,
                                         retrieve_root=root).results
        assert json.loads(found)["00081190"]["Value"] == [f"{root}/studies/{study}"]


def test_kept_texts_are_bounded():
    rows = RenderedRows(max_chars=100)
    for n in range(10):
        rows.put(("row", n), "x" * 30)
    assert len(rows) == 3 and rows.get(("row", 9)) and rows.get(("row", 0)) is None
    rows.put(("keyed",), "x" * 10, key_chars=65)  # the key counts too: the others go
    assert len(rows) == 1 and rows.get(("keyed",))
    rows.put(("big",), "x" * (MAX_ITEM_CHARS + 1))
    assert rows.get(("big",)) is None
