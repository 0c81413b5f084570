"""The DIMSE listener with a pynetdicom SCU: pending and cancel, simultaneous associations,
access control, and bad input (precise statuses, nothing half-stored, the listener keeps serving)."""
from __future__ import annotations

import os
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (CTImageStorage, MRImageStorage, StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove,
                                  Verification)

from tests.e2e.dimse_support import associate, dataset_bytes, fresh_copy

pytestmark = pytest.mark.e2e

@pytest.fixture(autouse=True)
def raw_files(monkeypatch):
    """Send files as they are (the data set bytes after the file meta), as a modality does."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _ae(title: str = "GWTEST") -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def _store_ae(title: str = "GWTEST") -> AE:
    ae = _ae(title)
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    return ae


def _context_id(assoc, abstract_syntax) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == abstract_syntax)


def _store(server, paths: list[Path], title: str = "GWTEST") -> list[int]:
    assoc = associate(server, _store_ae(title))
    assert assoc.is_established
    try:
        return [assoc.send_c_store(p).Status for p in paths]
    finally:
        assoc.release()


def _qido_instances(server, **params) -> list[dict]:
    response = server.http.get(f"{server.dicomweb}/instances", params=params, timeout=30)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else []


def _staging(server) -> Path:
    return server.data_dir / "blobs" / ".staging"


@pytest.fixture(scope="module")
def study40(dimse_server, tmp_path_factory):
    """One study of 40 CT images, stored by C-STORE on one association."""
    folder = tmp_path_factory.mktemp("study40")
    study, series = generate_uid(), generate_uid()
    paths = [fresh_copy("CT_small.dcm", folder, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i)
             for i in range(1, 41)]
    assert _store(dimse_server, paths) == [0x0000] * 40
    return study, series, paths


# --- C-FIND: pending responses and cancel ------------------------------------------------------

def _image_query(study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = ""
    ds.InstanceNumber = ""
    return ds


def test_find_sends_one_pending_response_per_match(dimse_server, study40):
    study, _series, paths = study40
    ae = _ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = associate(dimse_server, ae)
    try:
        responses = list(assoc.send_c_find(_image_query(study), StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    statuses = [status.Status for status, _ in responses]
    assert statuses == [0xFF00] * 40 + [0x0000]
    identifiers = [ident for _, ident in responses[:-1]]
    assert sorted(int(i.InstanceNumber) for i in identifiers) == list(range(1, 41))
    assert {i.SOPInstanceUID for i in identifiers} == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                                                       for p in paths}
    assert {e.keyword for e in identifiers[0]} <= {"QueryRetrieveLevel", "StudyInstanceUID", "SOPInstanceUID",
                                                   "InstanceNumber", "RetrieveAETitle", "SpecificCharacterSet"}


@pytest.fixture(scope="module")
def study200(dimse_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study200")
    study, series = generate_uid(), generate_uid()
    paths = [fresh_copy("CT_small.dcm", folder, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i)
             for i in range(1, 201)]
    assert _store(dimse_server, paths) == [0x0000] * 200
    return study


def test_find_cancel_is_honoured(dimse_server, study200):
    """C-CANCEL after the first match: the listener stops with 0xFE00 (pynetdicom drops a
    cancel that arrives before the C-FIND is being served, so it follows a response). On
    loopback all 200 matches may go out before the cancel is read: such an attempt is retried."""
    study = study200
    for _attempt in range(5):  # the cancel races the 200 matches on loopback: it may come too late
        ae = _ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = associate(dimse_server, ae)
        statuses = []
        try:
            for status, _identifier in assoc.send_c_find(_image_query(study),
                                                         StudyRootQueryRetrieveInformationModelFind, msg_id=7):
                statuses.append(status.Status)
                if len(statuses) == 1:
                    assoc.send_c_cancel(7, _context_id(assoc, StudyRootQueryRetrieveInformationModelFind))
        finally:
            assoc.release()
        if statuses[-1] != 0x0000:
            break
        assert len(statuses) == 201  # every match sent before the cancel was read: try again
    assert statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) - 1 < 200


def test_get_cancel_is_honoured_between_sub_operations(dimse_server, study40):
    study, _series, _paths = study40
    ae = _ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    received: list[str] = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        if len(received) == 2:  # cancel before answering the second sub-operation
            event.assoc.send_c_cancel(9, _context_id(event.assoc, StudyRootQueryRetrieveInformationModelGet))
        return 0x0000

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    assoc = associate(dimse_server, ae, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                      evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet, msg_id=9))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert len(received) == 2
    assert final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfRemainingSuboperations == 38


# --- simultaneous associations -----------------------------------------------------------------

def test_simultaneous_associations(dimse_server, tmp_path, study40):
    study = generate_uid()
    batches = [[fresh_copy("CT_small.dcm", tmp_path / str(t), StudyInstanceUID=study) for _ in range(5)]
               for t in range(4)]
    results: dict[str, list] = {}

    def store(name, paths):
        results[name] = _store(dimse_server, paths)

    def find(name):
        ae = _ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = associate(dimse_server, ae)
        try:
            results[name] = [s.Status for s, _ in assoc.send_c_find(_image_query(study40[0]),
                                                                     StudyRootQueryRetrieveInformationModelFind)]
        finally:
            assoc.release()

    threads = [threading.Thread(target=store, args=(f"store{i}", b)) for i, b in enumerate(batches)]
    threads += [threading.Thread(target=find, args=(f"find{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(4):
        assert results[f"store{i}"] == [0x0000] * 5
    for i in range(2):
        assert results[f"find{i}"] == [0xFF00] * 40 + [0x0000]
    assert len(_qido_instances(dimse_server, StudyInstanceUID=study)) == 20


def test_several_listener_processes_share_the_port(tmp_path):
    """dimse.listeners = 2: two processes listen on the one port, associations reach both
    (the kernel spreads them), and every instance is stored once whichever took it."""
    import psutil

    from tests.e2e.dimse_support import DimseServer

    server = DimseServer(tmp_path / "data", env={"GATEWAY_DIMSE__LISTENERS": "2"}).start()
    try:
        deadline = time.monotonic() + 60
        while True:  # both children bound the port
            listening = {c.pid for c in psutil.Process(server.proc.pid).children(recursive=True)
                         if any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == server.dimse_port
                                for conn in c.net_connections("tcp"))}
            if len(listening) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(listening) == 2, server.log()

        study = generate_uid()
        served_by: set[int] = set()
        batches = [[fresh_copy("CT_small.dcm", tmp_path / str(t), StudyInstanceUID=study) for _ in range(2)]
                   for t in range(16)]
        results: dict[int, list] = {}

        def store(i, paths):
            assoc = associate(server, _store_ae())
            try:
                peer = assoc.dul.socket.socket.getsockname()
                # The listener process holding the other end of this connection.
                served_by.update(c.pid for c in psutil.Process(server.proc.pid).children(recursive=True)
                                 for conn in c.net_connections("tcp")
                                 if conn.raddr and (conn.raddr.ip, conn.raddr.port) == peer)
                results[i] = [assoc.send_c_store(p).Status for p in paths]
            finally:
                assoc.release()

        threads = [threading.Thread(target=store, args=(i, b)) for i, b in enumerate(batches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == {i: [0x0000, 0x0000] for i in range(16)}
        assert len(_qido_instances(server, StudyInstanceUID=study)) == 32
        assert served_by == listening, "16 associations all went to one listener process"
    finally:
        server.stop()


# --- access control ----------------------------------------------------------------------------

def test_unknown_calling_ae_rejected_at_association(dimse_server):
    assoc = associate(dimse_server, _store_ae("INTRUDER"))
    assert assoc.is_rejected
    assert _store(dimse_server, []) == []  # the listener keeps serving


def test_move_to_unknown_destination_is_a801(dimse_server, study40):
    ae = _ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study40[0]
    assoc = associate(dimse_server, ae)
    try:
        responses = list(assoc.send_c_move(query, "NOWHERE", StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    assert [s.Status for s, _ in responses] == [0xA801]


def test_move_not_allowed_is_withheld_at_negotiation(dimse_server):
    ae = _ae("STOREONLY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = associate(dimse_server, ae)
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert CTImageStorage in accepted
    assert StudyRootQueryRetrieveInformationModelMove not in accepted


def test_get_not_allowed_is_refused(dimse_server, study40):
    ae = _ae("STOREONLY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study40[0]
    assoc = associate(dimse_server, ae)
    try:
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0x0124


# --- bad input ---------------------------------------------------------------------------------

def _write(path: Path, meta_class: str, sop: str, data_set: bytes) -> Path:
    from gateway.dimse.handlers import file_meta_bytes

    path.write_bytes(file_meta_bytes(meta_class, sop, ExplicitVRLittleEndian) + data_set)
    return path


def test_abort_mid_transfer_stores_nothing(dimse_server, tmp_path):
    path = fresh_copy("CT_small.dcm", tmp_path)
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assoc = associate(dimse_server, _store_ae())
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = sop
    request.Priority = 2
    request.DataSet = BytesIO(dataset_bytes(path))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = list(message.encode_msg(_context_id(assoc, CTImageStorage), 4096))
    assert len(pdus) > 4
    sock = assoc.dul.socket.socket
    for pdata in pdus[:4]:  # the command and the first data set fragments, written now...
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        sock.sendall(pdu.encode())
    assoc.abort()  # ...then the association is aborted
    deadline = time.monotonic() + 30
    while "connection closed during a C-STORE" not in dimse_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "connection closed during a C-STORE" in dimse_server.log()
    assert _qido_instances(dimse_server, SOPInstanceUID=sop) == []
    assert list(_staging(dimse_server).iterdir()) == []  # the partial data set was removed
    assert _store(dimse_server, [path]) == [0x0000]  # the listener keeps serving; the whole instance stores


def test_dataset_not_matching_its_sop_class(dimse_server, tmp_path):
    """The C-STORE says MR Image Storage, the data set is a CT image: 0xA900, nothing stored."""
    path = fresh_copy("CT_small.dcm", tmp_path)
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    bad = _write(tmp_path / "mismatch.dcm", MRImageStorage, sop, dataset_bytes(path))
    assert _store(dimse_server, [bad]) == [0xA900]
    assert _qido_instances(dimse_server, SOPInstanceUID=sop) == []
    assert "differs from SOPClassUID" in dimse_server.log()


def test_unreadable_dataset_is_c000(dimse_server, tmp_path):
    sop = generate_uid()
    bad = _write(tmp_path / "garbage.dcm", CTImageStorage, sop, os.urandom(2000))
    assert _store(dimse_server, [bad]) == [0xC000]
    assert _qido_instances(dimse_server, SOPInstanceUID=sop) == []


def test_duplicates_follow_the_policy(dimse_server, tmp_path):
    path = fresh_copy("CT_small.dcm", tmp_path, PatientName="DUP^FIRST")
    assert _store(dimse_server, [path, path]) == [0x0000, 0x0000]  # same bytes: success, stored once
    ds = pydicom.dcmread(path)
    ds.PatientName = "DUP^OTHER"
    other = tmp_path / "other.dcm"
    ds.save_as(other, enforce_file_format=True)
    assert _store(dimse_server, [other]) == [0x0111]  # same SOP Instance, other bytes: refused
    (found,) = _qido_instances(dimse_server, SOPInstanceUID=ds.SOPInstanceUID, includefield="PatientName")
    assert found["00100010"]["Value"][0]["Alphabetic"] == "DUP^FIRST"


def test_store_not_allowed_is_refused(dimse_server, tmp_path):
    path = fresh_copy("CT_small.dcm", tmp_path)
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert _store(dimse_server, [path], title="FINDONLY") == [0x0124]
    assert _qido_instances(dimse_server, SOPInstanceUID=sop) == []
