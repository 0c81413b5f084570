"""The listener in process: negotiation policy, C-STORE statuses, the received file, C-FIND limits."""
from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (CTImageStorage, PatientRootQueryRetrieveInformationModelMove,
                                  StudyRootQueryRetrieveInformationModelFind)

from gateway.config import load_settings
from gateway.dimse.handlers import IMPLEMENTATION_CLASS_UID, file_meta_bytes
from gateway.dimse.listener import Listener
from gateway.services import Services
from tests.data import sample_file as sample_file
from tests.helpers import free_port


@pytest.fixture
def listener(tmp_path, request):
    saved = {k: getattr(_config, k) for k in ("STORE_RECV_CHUNKED_DATASET", "STORE_SEND_CHUNKED_DATASET",
                                              "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS")}
    overrides = {"storage.data_dir": str(tmp_path / "data"), "storage.fsync": False, "log.level": "warning",
                 "dimse.port": free_port(), "dimse.ae_title": "UNITSCP",
                 "dimse.peers": [{"ae_title": "UNIT", "hosts": ["127.0.0.1"]},
                                 {"ae_title": "NOMOVE", "allow": ["echo", "store", "find", "get"]}],
                 **getattr(request, "param", {})}
    settings = load_settings(overrides=overrides, environ={})
    services = Services.build(settings, plugins=False)
    srv = Listener(settings, services).start()
    yield srv
    srv.stop()
    services.close()
    for key, value in saved.items():
        setattr(_config, key, value)


def _associate(listener, contexts, title="UNIT"):
    ae = AE(ae_title=title)
    ae.requested_contexts = contexts
    return ae.associate("127.0.0.1", listener.address[1], ae_title="UNITSCP")


def _ct(tmp_path, **attributes) -> pydicom.Dataset:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# --- the file meta of what is received ---------------------------------------------------------

def test_file_meta_is_deterministic_and_describes_the_data_set():
    first = file_meta_bytes(CTImageStorage, "1.2.3", JPEG2000Lossless)
    assert first == file_meta_bytes(CTImageStorage, "1.2.3", JPEG2000Lossless)
    assert first[:132] == b"\x00" * 128 + b"DICM"
    meta = pydicom.dcmread(io.BytesIO(first), force=True).file_meta
    assert meta.MediaStorageSOPClassUID == CTImageStorage and meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert meta.TransferSyntaxUID == JPEG2000Lossless
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert "ImplementationVersionName" not in meta  # a new release must not change stored bytes


# --- negotiation -------------------------------------------------------------------------------

@pytest.mark.parametrize("proposed", [[JPEG2000Lossless, ExplicitVRLittleEndian],
                                      [ExplicitVRLittleEndian, JPEG2000Lossless],
                                      [ImplicitVRLittleEndian, ExplicitVRLittleEndian]])
def test_the_peers_order_of_transfer_syntaxes_wins(listener, proposed):
    assoc = _associate(listener, [build_context(CTImageStorage, proposed)])
    try:
        (context,) = assoc.accepted_contexts
    finally:
        assoc.release()
    assert context.transfer_syntax[0] == proposed[0]


def test_move_models_withheld_from_peers_that_may_not_move(listener):
    contexts = [build_context(PatientRootQueryRetrieveInformationModelMove), build_context(CTImageStorage)]
    for title, expected in (("UNIT", 2), ("NOMOVE", 1)):
        assoc = _associate(listener, contexts, title)
        try:
            assert len(assoc.accepted_contexts) == expected
        finally:
            assoc.release()


def test_unknown_peer_rejected(listener):
    assoc = _associate(listener, [build_context(CTImageStorage)], "STRANGER")
    assert assoc.is_rejected


# --- C-STORE statuses --------------------------------------------------------------------------

def _store(listener, ds) -> Dataset:
    assoc = _associate(listener, [build_context(CTImageStorage, ExplicitVRLittleEndian)])
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def test_store_success_then_visible(listener, tmp_path):
    ds = _ct(tmp_path)
    assert _store(listener, ds).Status == 0x0000
    records = listener.services.retrieve.instances(
        listener.peers.match("UNIT", "127.0.0.1").principal("UNIT"), ds.StudyInstanceUID)
    assert [r.sop_uid for r in records] == [ds.SOPInstanceUID]


@pytest.mark.parametrize("listener", [{"ingest.max_instance_bytes": 1000}], indirect=True)
def test_too_large_is_out_of_resources(listener, tmp_path):
    rsp = _store(listener, _ct(tmp_path))
    assert rsp.Status == 0xA700
    assert "exceeds" in rsp.ErrorComment


def test_missing_uid_is_c000(listener, tmp_path):
    ds = _ct(tmp_path)
    del ds.StudyInstanceUID
    rsp = _store(listener, ds)
    assert rsp.Status == 0xC000 and "StudyInstanceUID" in rsp.ErrorComment


def test_series_under_another_study_is_a900(listener, tmp_path):
    first = _ct(tmp_path)
    assert _store(listener, first).Status == 0x0000
    second = _ct(tmp_path, StudyInstanceUID=generate_uid(), SeriesInstanceUID=first.SeriesInstanceUID)
    assert _store(listener, second).Status == 0xA900


def test_a_bug_in_the_core_is_a_processing_failure_not_c211(listener, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(listener.services.ingest, "stage", broken)
    rsp = _store(listener, _ct(tmp_path))
    assert rsp.Status == 0x0110 and "RuntimeError" in rsp.ErrorComment


# --- C-FIND limit ------------------------------------------------------------------------------

@pytest.mark.parametrize("listener", [{"dimse.find_max_results": 2}], indirect=True)
def test_find_max_results(listener, tmp_path):
    study = generate_uid()
    for _ in range(4):
        assert _store(listener, _ct(tmp_path, StudyInstanceUID=study)).Status == 0x0000
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study
    query.SOPInstanceUID = ""
    assoc = _associate(listener, [build_context(StudyRootQueryRetrieveInformationModelFind)])
    try:
        statuses = [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()
    assert statuses == [0xFF00, 0xFF00, 0x0000]
