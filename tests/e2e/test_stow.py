"""STOW-RS against a real server: body forms, response JSON, statuses, study scoping, duplicates."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.helpers import multipart_body, multipart_content_type, multipart_parts

pytestmark = pytest.mark.e2e

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FAILURE_REASON, FAILED_SEQ, REFERENCED_SEQ, RETRIEVE_URL = "00081197", "00081198", "00081199", "00081190"
SOP_INSTANCE = "00081155"


# --- building instances and bodies ------------------------------------------------------

def instance(study: str | None = None, series: str | None = None, sop: str | None = None, *,
             seed: int = 0, size: int = 16, description: str = "stow test") -> bytes:
    """A small CT image as Part 10 bytes; ``seed`` changes the pixel values."""
    sop = sop or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName, ds.PatientID = "Stow^Test", "STOW-1"
    ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "CT", description, 1
    ds.StudyDate, ds.StudyTime = "20240102", "101010"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def post(server, body, content_type: str, path: str = "/studies", **kw) -> requests.Response:
    return server.http.post(server.dicomweb + path, data=body, headers={"Content-Type": content_type, **kw}, timeout=60)


def stow(server, parts: list[bytes], path: str = "/studies") -> requests.Response:
    return post(server, multipart_body(parts, "stow-boundary-42"), multipart_content_type("stow-boundary-42"), path)


def retrieve_bytes(server, data: bytes) -> bytes | None:
    study, series, sop = uids(data)
    r = server.http.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
                     headers={"Accept": DICOM_ANY}, timeout=60)
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    parts = [body for _, body in multipart_parts(r)]
    assert len(parts) == 1
    return parts[0]


def referenced(body: dict) -> dict[str, dict]:
    return {item[SOP_INSTANCE]["Value"][0]: item for item in body.get(REFERENCED_SEQ, {}).get("Value", [])}


def failed(body: dict) -> dict[str | None, dict]:
    return {item.get(SOP_INSTANCE, {}).get("Value", [None])[0]: item
            for item in body.get(FAILED_SEQ, {}).get("Value", [])}


def reason(item: dict) -> int:
    return item[FAILURE_REASON]["Value"][0]


def study_instances(server, study: str) -> set[str]:
    r = server.http.get(f"{server.dicomweb}/studies/{study}/instances", timeout=30)
    assert r.status_code == 200, r.text
    return {row["00080018"]["Value"][0] for row in r.json()}


# --- body forms -----------------------------------------------------------------------------

def test_single_application_dicom_body(server):
    data = instance()
    study, series, sop = uids(data)
    r = post(server, data, "application/dicom")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/dicom+json")
    body = r.json()
    item = referenced(body)[sop]
    assert item["00081150"]["Value"] == [CTImageStorage]
    assert item[RETRIEVE_URL]["Value"] == [f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}"]
    assert body[RETRIEVE_URL]["Value"] == [f"{server.dicomweb}/studies/{study}"]
    assert FAILED_SEQ not in body
    assert retrieve_bytes(server, data) == data


@pytest.mark.parametrize("content_type", [
    'multipart/related; type="application/dicom"; boundary="{b}"',
    "multipart/related; type=application/dicom; boundary={b}",
    'multipart/related; type="application/dicom"; boundary={b}',
    "multipart/related; type=application/dicom; boundary=\"{b}\"",
    "Multipart/Related; boundary={b}; Type=\"Application/DICOM\"",
    "multipart/related; boundary={b}",  # type defaults to application/dicom
], ids=["quoted", "unquoted", "quoted-type", "quoted-boundary", "reordered-case", "no-type"])
def test_multipart_parameter_forms(server, content_type):
    boundary = "b0undary-" + os.urandom(6).hex()
    study = generate_uid()
    parts = [instance(study), instance(study)]
    r = post(server, multipart_body(parts, boundary), content_type.format(b=boundary))
    assert r.status_code == 200, r.text
    assert set(referenced(r.json())) == {uids(p)[2] for p in parts}
    assert study_instances(server, study) == {uids(p)[2] for p in parts}


def test_chunked_upload_stores_everything(server):
    study = generate_uid()
    series = generate_uid()
    parts = [instance(study, series, seed=i, size=64) for i in range(12)]
    body = multipart_body(parts, "chunky")

    def chunks():
        for offset in range(0, len(body), 7000):  # boundaries straddle chunk borders
            yield body[offset: offset + 7000]

    r = server.http.post(server.dicomweb + "/studies", data=chunks(), timeout=60,
                      headers={"Content-Type": multipart_content_type("chunky", quote_boundary=True)})
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.request.headers
    assert r.status_code == 200, r.text
    assert set(referenced(r.json())) == {uids(p)[2] for p in parts}
    for data in parts:
        assert retrieve_bytes(server, data) == data


def test_chunked_single_application_dicom(server):
    data = instance(size=128)

    def chunks():
        for offset in range(0, len(data), 1000):
            yield data[offset: offset + 1000]

    r = server.http.post(server.dicomweb + "/studies", data=chunks(), headers={"Content-Type": "application/dicom"},
                      timeout=60)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 200, r.text
    assert retrieve_bytes(server, data) == data


# --- response statuses ----------------------------------------------------------------------

def test_partial_failure_is_202_with_both_sequences(server):
    good = instance()
    r = stow(server, [good, b"this is not DICOM at all" * 20])
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(referenced(body)) == {uids(good)[2]}
    failures = list(failed(body).values())
    assert len(failures) == 1
    assert reason(failures[0]) == 0xC000
    assert "DICOM" in failures[0]["00000902"]["Value"][0]
    assert retrieve_bytes(server, good) == good


def test_nothing_stored_is_409(server):
    r = stow(server, [b"garbage" * 50, b"more garbage" * 50])
    assert r.status_code == 409, r.text
    body = r.json()
    assert REFERENCED_SEQ not in body
    assert [reason(i) for i in body[FAILED_SEQ]["Value"]] == [0xC000, 0xC000]


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/jpeg",
                                          'multipart/related; type="application/dicom+json"; boundary=x',
                                          "multipart/form-data; boundary=x"])
def test_unsupported_content_type_is_415(server, content_type):
    r = post(server, multipart_body([instance()], "x"), content_type)
    assert r.status_code == 415, r.text
    assert r.json()["message"]


def test_malformed_multipart_is_400(server):
    r = post(server, multipart_body([b"xx"], "other"), multipart_content_type("expected"))
    assert r.status_code == 400, r.text
    assert "boundary" in r.json()["message"]


def test_part_with_other_media_type_fails_alone(server):
    good = instance()
    body = multipart_body([({"Content-Type": "application/pdf"}, b"%PDF-1.4 nothing"), good], "mixed")
    r = post(server, body, multipart_content_type("mixed"))
    assert r.status_code == 202, r.text
    failures = list(failed(r.json()).values())
    assert len(failures) == 1 and "application/pdf" in failures[0]["00000902"]["Value"][0]
    assert set(referenced(r.json())) == {uids(good)[2]}


# --- study-scoped STOW ----------------------------------------------------------------------

def test_post_to_study_stores_only_that_study(server):
    study, other_study = generate_uid(), generate_uid()
    right, wrong = instance(study), instance(other_study)
    r = stow(server, [right, wrong], path=f"/studies/{study}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(referenced(body)) == {uids(right)[2]}
    failure = failed(body)[uids(wrong)[2]]
    assert reason(failure) == 0xA901
    assert other_study in failure["00000902"]["Value"][0]
    assert body[RETRIEVE_URL]["Value"] == [f"{server.dicomweb}/studies/{study}"]
    assert study_instances(server, study) == {uids(right)[2]}
    assert server.http.get(f"{server.dicomweb}/studies/{other_study}/instances", timeout=30).json() == []
    assert retrieve_bytes(server, wrong) is None


def test_post_to_study_all_wrong_is_409(server):
    r = stow(server, [instance()], path=f"/studies/{generate_uid()}")
    assert r.status_code == 409, r.text
    assert [reason(i) for i in r.json()[FAILED_SEQ]["Value"]] == [0xA901]


# --- duplicates -----------------------------------------------------------------------------

def test_identical_duplicate_is_idempotent(server):
    data = instance()
    study, _, sop = uids(data)
    first = stow(server, [data])
    assert first.status_code == 200, first.text
    again = stow(server, [data])
    assert again.status_code == 200, again.text
    assert set(referenced(again.json())) == {sop}
    both = stow(server, [data, data])  # twice in one request
    assert both.status_code == 200, both.text
    assert study_instances(server, study) == {sop}
    count = server.http.get(f"{server.dicomweb}/studies", params={"StudyInstanceUID": study}, timeout=30).json()
    assert count[0]["00201208"]["Value"] == [1]
    assert retrieve_bytes(server, data) == data


def test_same_sop_other_bytes_is_rejected_by_default(server):
    original = instance(seed=1)
    study, series, sop = uids(original)
    changed = instance(study, series, sop, seed=2, description="changed")
    assert changed != original
    assert stow(server, [original]).status_code == 200
    r = stow(server, [changed])
    assert r.status_code == 409, r.text
    failure = failed(r.json())[sop]
    assert reason(failure) == 0x0111
    assert sop in failure["00000902"]["Value"][0]
    assert retrieve_bytes(server, original) == original
    meta = server.http.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/metadata",
                        timeout=30).json()
    assert meta[0]["0008103E"]["Value"] == ["stow test"]


def _blob_files(server, sop: str) -> list[Path]:
    return [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file() and sop in str(p)]


def test_replace_policy_replaces_bytes(fresh_server):
    fresh_server.env["GATEWAY_INGEST__DUPLICATE_POLICY"] = "replace"
    server = fresh_server.start()
    original = instance(seed=1)
    study, series, sop = uids(original)
    changed = instance(study, series, sop, seed=2, description="changed")
    assert stow(server, [original]).status_code == 200
    assert len(_blob_files(server, sop)) == 1
    r = stow(server, [changed])
    assert r.status_code == 200, r.text
    assert set(referenced(r.json())) == {sop}
    assert retrieve_bytes(server, changed) == changed
    meta = server.http.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/metadata",
                        timeout=30).json()
    assert meta[0]["0008103E"]["Value"] == ["changed"]
    blobs = _blob_files(server, sop)
    assert len(blobs) == 1 and hashlib.sha256(blobs[0].read_bytes()).digest() == hashlib.sha256(changed).digest()
    assert study_instances(server, study) == {sop}
    frame = server.http.get(f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                         headers={"Accept": "application/octet-stream"}, timeout=30)
    assert frame.status_code == 200, frame.text
    assert frame.content == pydicom.dcmread(io.BytesIO(changed)).PixelData
