"""One core behind two doors: C-STORE → QIDO-RS + WADO-RS, STOW-RS → C-FIND + C-GET, byte for byte."""
from __future__ import annotations

import uuid
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet

from tests.e2e.dimse_support import associate, dataset_bytes, fresh_copy
from tests.helpers import multipart_body, multipart_content_type, multipart_parts

pytestmark = pytest.mark.e2e

# Uncompressed, JPEG 2000, RLE, deflated: the data set bytes must survive each unchanged.
FILES = ["CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "image_dfl.dcm"]


@pytest.fixture(autouse=True)
def raw_dimse(monkeypatch):
    """Our SCU sends files' data sets as they are and receives C-STOREs into files unparsed."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)


def _meta(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta


def _pairs(paths: list[Path]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((str(_meta(p).MediaStorageSOPClassUID), str(_meta(p).TransferSyntaxUID))
                              for p in paths))


def _wado_instance(server, path: Path) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    url = f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    response = server.http.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                               timeout=30)
    assert response.status_code == 200, response.text
    ((_, body),) = multipart_parts(response)
    return body


def test_c_store_then_qido_and_wado_byte_equal(dimse_server, tmp_path):
    study = generate_uid()
    paths = [fresh_copy(name, tmp_path, StudyInstanceUID=study) for name in FILES]
    ae = AE(ae_title="GWTEST")
    ae.requested_contexts = [build_context(sop_class, [ts]) for sop_class, ts in _pairs(paths)]
    assoc = associate(dimse_server, ae)
    try:
        statuses = [assoc.send_c_store(p).Status for p in paths]  # each data set as its file holds it
    finally:
        assoc.release()
    assert statuses == [0x0000] * len(paths)

    response = dimse_server.http.get(f"{dimse_server.dicomweb}/studies/{study}/instances", timeout=30)
    assert response.status_code == 200
    assert {i["00080018"]["Value"][0] for i in response.json()} == {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}

    for path in paths:
        body = _wado_instance(dimse_server, path)
        assert body[:132] == b"\x00" * 128 + b"DICM"
        received = tmp_path / "received.dcm"
        received.write_bytes(body)
        # what came on the wire, unchanged, after a file meta that describes it
        assert dataset_bytes(received) == dataset_bytes(path), path.name
        meta, original = _meta(received), _meta(path)
        assert meta.TransferSyntaxUID == original.TransferSyntaxUID
        assert meta.MediaStorageSOPClassUID == original.MediaStorageSOPClassUID
        assert meta.MediaStorageSOPInstanceUID == original.MediaStorageSOPInstanceUID


def _stow(server, paths: list[Path]) -> None:
    boundary = uuid.uuid4().hex
    body = multipart_body([p.read_bytes() for p in paths], boundary)
    response = server.http.post(f"{server.dicomweb}/studies", data=body, timeout=60, headers={
        "Content-Type": multipart_content_type(boundary),
        "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text


def test_stow_then_c_find_and_c_get_byte_equal(dimse_server, tmp_path):
    study = generate_uid()
    paths = [fresh_copy(name, tmp_path, StudyInstanceUID=study, PatientID="CROSS-DOOR") for name in FILES]
    _stow(dimse_server, paths)
    sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}

    ae = AE(ae_title="GWTEST")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    pairs = _pairs(paths)
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, [ts])
    roles = [build_role(sop_class, scp_role=True) for sop_class in dict.fromkeys(c for c, _ in pairs)]
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event):
        path = Path(event.dataset_path)  # the data set as it arrived, behind pynetdicom's file meta
        received[event.request.AffectedSOPInstanceUID] = (str(event.context.transfer_syntax), dataset_bytes(path))
        return 0x0000

    assoc = associate(dimse_server, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        query.PatientID = ""
        query.NumberOfStudyRelatedInstances = ""
        found = [(s.Status, i) for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
        assert [s for s, _ in found] == [0xFF00, 0x0000]
        assert found[0][1].PatientID == "CROSS-DOOR"
        assert int(found[0][1].NumberOfStudyRelatedInstances) == len(paths)

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        final = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))[-1][0]
    finally:
        assoc.release()
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(paths)
    assert set(received) == set(sops)
    for sop, (ts, data) in received.items():
        assert ts == str(_meta(sops[sop]).TransferSyntaxUID), sops[sop].name
        assert data == dataset_bytes(sops[sop]), sops[sop].name  # the STOW-RS part's data set, unchanged
