"""The DIMSE listener with Debian's dcmtk: echoscu, storescu, findscu, movescu (to a storescp), getscu."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.e2e.dimse_support import DCMTK_ENV, SAMPLES, SCP_AE, dcmtk, fresh_copy, storescu

pytestmark = pytest.mark.e2e


def _addr(server) -> list[str]:
    return ["-aec", SCP_AE, "127.0.0.1", str(server.dimse_port)]


def _same_pixels(a: pydicom.Dataset, b: pydicom.Dataset) -> bool:
    if a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID:
        return a.PixelData == b.PixelData
    return bool((a.pixel_array == b.pixel_array).all())


def _qido(server, path: str, **params) -> list[dict]:
    response = server.http.get(f"{server.dicomweb}{path}", params=params, timeout=30)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else []


def _find(server, tmp_path: Path, model: str, *keys: str, aet: str = "GWTEST") -> tuple[subprocess.CompletedProcess, list]:
    out = tmp_path / f"find{len(list(tmp_path.glob('find*')))}"
    out.mkdir()
    args = ["findscu", "-v", model, "-X", "-od", str(out), "-aet", aet]
    for key in keys:
        args += ["-k", key]
    run = dcmtk(*args, *_addr(server))
    return run, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


# --- C-ECHO and association control ------------------------------------------------------------

def test_echoscu_known_peer(dimse_server):
    run = dcmtk("echoscu", "-v", "-aet", "GWTEST", *_addr(dimse_server))
    assert run.returncode == 0, run.stderr
    assert "Success" in run.stderr


@pytest.mark.parametrize("aet", ["INTRUDER", "WRONGHOST"])
def test_unknown_calling_ae_is_rejected(dimse_server, aet):
    run = dcmtk("echoscu", "-v", "-aet", aet, *_addr(dimse_server))
    assert run.returncode != 0
    assert "Association Rejected" in run.stderr
    assert "Calling AE Title Not Recognized" in run.stderr
    assert f"calling AE {aet!r}" in dimse_server.log()
    # and the listener keeps serving
    assert dcmtk("echoscu", "-aet", "GWTEST", *_addr(dimse_server)).returncode == 0


def test_echo_not_allowed_is_refused(dimse_server):
    run = dcmtk("echoscu", "-v", "-aet", "NOECHO", *_addr(dimse_server))
    # 0x0124 Refused: Not Authorized (PS3.7 C.5); dcmtk has no name for it on C-ECHO
    assert "Status: 0x124" in run.stderr, run.stderr


# --- C-STORE -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stored_samples(dimse_server, tmp_path_factory):
    """One study of every sample transfer syntax, stored with storescu."""
    folder = tmp_path_factory.mktemp("samples")
    study = pydicom.uid.generate_uid()
    files = [fresh_copy(name, folder, StudyInstanceUID=study, PatientID="DIMSE-SAMPLES") for name in SAMPLES]
    runs = storescu(dimse_server, files)
    return study, files, runs


def test_storescu_stores_every_transfer_syntax(dimse_server, stored_samples):
    study, files, runs = stored_samples
    for run in runs:
        assert run.returncode == 0, run.args[:4] + [run.stderr]
    found = {item["00080018"]["Value"][0] for item in _qido(dimse_server, f"/studies/{study}/instances")}
    assert found == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}


def test_storescu_instances_retrieved_as_sent(dimse_server, stored_samples):
    """Compressed instances keep their transfer syntax and pixel bytes; all decode the same."""
    study, files, _ = stored_samples
    for path in files:
        original = pydicom.dcmread(path)
        url = (f"{dimse_server.dicomweb}/studies/{study}/series/{original.SeriesInstanceUID}"
               f"/instances/{original.SOPInstanceUID}")
        response = dimse_server.http.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                                 "transfer-syntax=*"}, timeout=30)
        assert response.status_code == 200, (path.name, response.text)
        from tests.helpers import multipart_parts

        (_headers, body), = multipart_parts(response)
        import io

        stored = pydicom.dcmread(io.BytesIO(body))
        if original.file_meta.TransferSyntaxUID.is_encapsulated:
            assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, path.name
            assert stored.PixelData == original.PixelData, path.name
        assert _same_pixels(stored, original), path.name
        assert stored.SOPInstanceUID == original.SOPInstanceUID


def test_storescu_again_is_a_duplicate_success(dimse_server, stored_samples):
    _study, files, _ = stored_samples
    runs = storescu(dimse_server, files[:1])
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]


# --- C-FIND ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def patient(dimse_server, tmp_path_factory):
    """A patient with two studies; the first has two series of two images."""
    folder = tmp_path_factory.mktemp("patient")
    pid = "FIND-" + pydicom.uid.generate_uid()[-12:]
    name = f"DIMSE^FIND{pid[-6:]}"
    study_a, study_b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    series_a1, series_a2 = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    files = []
    for study, series, date in ((study_a, series_a1, "20240105"), (study_a, series_a1, "20240105"),
                                (study_a, series_a2, "20240105"), (study_a, series_a2, "20240105"),
                                (study_b, None, "20240620")):
        files.append(fresh_copy("CT_small.dcm", folder, StudyInstanceUID=study, SeriesInstanceUID=series,
                                PatientID=pid, PatientName=name, StudyDate=date))
    runs = storescu(dimse_server, files)
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    return {"pid": pid, "name": name, "studies": (study_a, study_b), "series": (series_a1, series_a2), "sops": sops}


def test_findscu_patient_root_patient_level(dimse_server, patient, tmp_path):
    run, found = _find(dimse_server, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", f"PatientID={patient['pid']}",
                       "PatientName", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")
    assert run.returncode == 0, run.stderr
    assert len(found) == 1
    (rsp,) = found
    assert rsp.PatientName == patient["name"]
    assert int(rsp.NumberOfPatientRelatedStudies) == 2
    assert int(rsp.NumberOfPatientRelatedInstances) == 5
    # wildcard on the name finds the same patient
    _, by_name = _find(dimse_server, tmp_path, "-P", "QueryRetrieveLevel=PATIENT",
                       f"PatientName={patient['name'][:-2]}*", "PatientID")
    assert [r.PatientID for r in by_name] == [patient["pid"]]


def test_findscu_patient_root_study_series_image(dimse_server, patient, tmp_path):
    study_a, study_b = patient["studies"]
    _, studies = _find(dimse_server, tmp_path, "-P", "QueryRetrieveLevel=STUDY", f"PatientID={patient['pid']}",
                       "StudyInstanceUID", "StudyDate", "NumberOfStudyRelatedInstances")
    assert {(s.StudyInstanceUID, int(s.NumberOfStudyRelatedInstances)) for s in studies} == {(study_a, 4), (study_b, 1)}
    _, series = _find(dimse_server, tmp_path, "-P", "QueryRetrieveLevel=SERIES", f"PatientID={patient['pid']}",
                      f"StudyInstanceUID={study_a}", "SeriesInstanceUID", "Modality")
    assert {s.SeriesInstanceUID for s in series} == set(patient["series"])
    assert {s.Modality for s in series} == {"CT"}
    _, images = _find(dimse_server, tmp_path, "-P", "QueryRetrieveLevel=IMAGE", f"PatientID={patient['pid']}",
                      f"StudyInstanceUID={study_a}", f"SeriesInstanceUID={patient['series'][0]}", "SOPInstanceUID")
    assert {i.SOPInstanceUID for i in images} == set(patient["sops"][:2])


def test_findscu_study_root_matching_and_return_keys(dimse_server, patient, tmp_path):
    study_a, study_b = patient["studies"]
    # date range + wildcard; only the requested keys come back
    _, found = _find(dimse_server, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"PatientName={patient['name']}",
                     "StudyDate=20240601-20241231", "StudyInstanceUID", "AccessionNumber")
    assert [f.StudyInstanceUID for f in found] == [study_b]
    keys = {e.keyword for e in found[0]}
    assert keys <= {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle", "PatientName", "StudyDate",
                    "StudyInstanceUID", "AccessionNumber"}, keys
    assert found[0].RetrieveAETitle == SCP_AE
    # a UID list at the series level
    _, series = _find(dimse_server, tmp_path, "-S", "QueryRetrieveLevel=SERIES",
                      f"SeriesInstanceUID={patient['series'][0]}\\{patient['series'][1]}", "StudyInstanceUID",
                      "NumberOfSeriesRelatedInstances")
    assert sorted(int(s.NumberOfSeriesRelatedInstances) for s in series) == [2, 2]
    assert {s.StudyInstanceUID for s in series} == {study_a}
    # image level across the whole patient (relational)
    _, images = _find(dimse_server, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", f"PatientID={patient['pid']}",
                      "SOPInstanceUID", "SOPClassUID", "Rows")
    assert {i.SOPInstanceUID for i in images} == set(patient["sops"])
    assert {int(i.Rows) for i in images} == {128}


def test_findscu_bad_requests_get_precise_statuses(dimse_server, patient, tmp_path):
    run, found = _find(dimse_server, tmp_path, "-S", "QueryRetrieveLevel=PATIENT", "PatientID")
    assert not found
    assert "Error: DataSetDoesNotMatchSOPClass" in run.stderr, run.stderr  # 0xA900
    run, found = _find(dimse_server, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=2024-13-45")
    assert not found
    assert "0xc000" in run.stderr.lower() or "UnableToProcess" in run.stderr, run.stderr


def test_findscu_not_allowed_is_refused(dimse_server, tmp_path):
    run, found = _find(dimse_server, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", aet="STOREONLY")
    assert not found
    assert "Status: 0x124" in run.stderr, run.stderr  # Refused: Not Authorized


def test_peer_clinic_scopes_what_it_sees(dimse_server, patient, tmp_path):
    _, found = _find(dimse_server, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"PatientID={patient['pid']}",
                     "StudyInstanceUID", aet="CLINIC2")
    assert found == []


# --- C-MOVE and C-GET --------------------------------------------------------------------------

@pytest.fixture
def storescp(move_destination_port, tmp_path):
    """dcmtk's storescp as the C-MOVE destination "DEST" declared in the listener's settings."""
    folder = tmp_path / "received"
    folder.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "DEST", "+xa", "-od", str(folder), str(move_destination_port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import socket
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", move_destination_port), timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    yield folder
    proc.terminate()
    proc.wait(10)


def test_movescu_to_storescp(dimse_server, stored_samples, storescp):
    study, files, _ = stored_samples
    run = dcmtk("movescu", "-S", "-aet", "GWTEST", "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={study}", *_addr(dimse_server))
    assert run.returncode == 0, run.stderr
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in storescp.iterdir()}
    assert len(received) == len(files)
    for path in files:
        original = pydicom.dcmread(path)
        moved = received[original.SOPInstanceUID]
        if original.file_meta.TransferSyntaxUID.is_encapsulated:
            # sent as stored: same syntax, same compressed bytes
            assert moved.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, path.name
            assert moved.PixelData == original.PixelData, path.name
        assert _same_pixels(moved, original), path.name


def test_movescu_series_and_image_levels(dimse_server, patient, storescp):
    run = dcmtk("movescu", "-P", "-aet", "GWTEST", "-aem", "DEST", "-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"PatientID={patient['pid']}", "-k", f"StudyInstanceUID={patient['studies'][0]}",
                "-k", f"SeriesInstanceUID={patient['series'][1]}", "-k", f"SOPInstanceUID={patient['sops'][2]}",
                *_addr(dimse_server))
    assert run.returncode == 0, run.stderr
    assert {pydicom.dcmread(p).SOPInstanceUID for p in storescp.iterdir()} == {patient["sops"][2]}


def test_movescu_unknown_destination(dimse_server, stored_samples):
    study, _, _ = stored_samples
    run = dcmtk("movescu", "-S", "-aet", "GWTEST", "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={study}", *_addr(dimse_server))
    assert "MoveDestinationUnknown" in run.stderr or "0xa801" in run.stderr.lower(), run.stderr
    assert "unknown destination 'NOWHERE'" in dimse_server.log()


def test_getscu_uncompressed_study(dimse_server, tmp_path):
    folder = tmp_path / "src"
    study = pydicom.uid.generate_uid()
    files = [fresh_copy(name, folder, StudyInstanceUID=study) for name in ("CT_small.dcm", "MR_small.dcm")]
    assert all(r.returncode == 0 for r in storescu(dimse_server, files))
    out = tmp_path / "got"
    out.mkdir()
    run = dcmtk("getscu", "-S", "-aet", "GWTEST", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={study}", *_addr(dimse_server))
    assert run.returncode == 0, run.stderr
    got = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in out.iterdir()}
    assert len(got) == 2
    for path in files:
        original = pydicom.dcmread(path)
        assert got[original.SOPInstanceUID].PixelData == original.PixelData


def test_getscu_compressed_instance_when_preferred(dimse_server, stored_samples, tmp_path):
    """getscu +xv proposes JPEG 2000 lossless first: the stored bytes are sent unchanged."""
    study, files, _ = stored_samples
    path = next(f for f in files if "jp2klossless" in f.name)
    original = pydicom.dcmread(path)
    out = tmp_path / "got"
    out.mkdir()
    run = dcmtk("getscu", "-S", "+xv", "-aet", "GWTEST", "-od", str(out), "-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={original.SeriesInstanceUID}",
                "-k", f"SOPInstanceUID={original.SOPInstanceUID}", *_addr(dimse_server))
    assert run.returncode == 0, run.stderr
    (received,) = [pydicom.dcmread(p) for p in out.iterdir()]
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert received.PixelData == original.PixelData
