"""The ingest service in process: duplicates, conflicts and what a failure leaves behind."""
from __future__ import annotations

import io

import pydicom
import pytest

from auth.base import EMBEDDED_PRINCIPAL
from gateway.headers import dataset_offset
from tests.data import sample_file


def _with_meta(data: bytes, **meta) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def services(app):
    return app.extensions["gateway"]


def test_dataset_offset_is_where_file_meta_ends():
    data = sample_file("CT_small.dcm").read_bytes()
    offset = dataset_offset(io.BytesIO(data))
    ds = pydicom.dcmread(io.BytesIO(data[offset:]), force=True)
    assert ds.SOPInstanceUID == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID


def test_same_dataset_under_other_file_meta_is_a_duplicate(services):
    data = sample_file("CT_small.dcm").read_bytes()
    first = services.ingest.ingest(io.BytesIO(data), principal=EMBEDDED_PRINCIPAL)
    assert first.status == "stored"
    other_meta = _with_meta(data, ImplementationVersionName="OTHER_SCU_1", ImplementationClassUID="1.2.3.4")
    assert other_meta != data
    again = services.ingest.ingest(io.BytesIO(other_meta), principal=EMBEDDED_PRINCIPAL)
    assert again.status == "duplicate" and again.error is None
    (record,) = services.index.instances(EMBEDDED_PRINCIPAL.clinic_id, first.study_uid)
    assert record.sha256 == first.record.sha256  # the first copy is kept unchanged


def test_other_dataset_with_the_same_uid_is_a_conflict(services):
    data = sample_file("CT_small.dcm").read_bytes()
    services.ingest.ingest(io.BytesIO(data), principal=EMBEDDED_PRINCIPAL)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = "Changed^Name"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    outcome = services.ingest.ingest(io.BytesIO(out.getvalue()), principal=EMBEDDED_PRINCIPAL)
    assert outcome.status == "failed" and outcome.error.dimse_status == 0x0111
    assert outcome.error.http_status == 409


def test_a_failed_instance_leaves_no_staged_file(services):
    outcome = services.ingest.ingest(io.BytesIO(b"not dicom" * 100), principal=EMBEDDED_PRINCIPAL)
    assert outcome.status == "failed"
    assert list(services.blobs.staging_dir().iterdir()) == []


@pytest.mark.parametrize("look_ahead", [64 * 1024, 16, 200])
def test_dataset_hash_while_spooling_equals_a_hash_of_the_data_set(services, monkeypatch, look_ahead):
    import hashlib

    from gateway.services import ingest

    monkeypatch.setattr(ingest._FileDigests, "LOOK_AHEAD", look_ahead)  # 16/200: meta longer than it
    data = sample_file("CT_small.dcm").read_bytes()
    staged = services.ingest.stage(io.BytesIO(data))
    try:
        offset = dataset_offset(io.BytesIO(data))
        assert staged.dataset_sha256 == hashlib.sha256(data[offset:]).hexdigest()
        assert staged.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        staged.discard()
