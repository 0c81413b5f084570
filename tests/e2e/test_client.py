"""The Python client and ``gateway-client`` against a real gateway: uploads and downloads
through a proxy that drops the connection mid-transfer, resumed; the CLI's summary and exit
status."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from gateway.synthetic import write_cbct
from proprietary.client import GatewayClient
from tests.helpers import CuttingProxy
from tests.services import dicom_instance

pytestmark = pytest.mark.e2e


def _retag(paths: list[Path], folder: Path) -> tuple[str, list[Path]]:
    """Copies of the files under one new study, so a test counts only its own instances."""
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return study, out


@pytest.fixture(scope="module")
def cbct(tmp_path_factory) -> list[Path]:
    return write_cbct(tmp_path_factory.mktemp("cbct"), n_slices=100, size=64)


def _instances(server, study: str) -> list[str]:
    found = server.http.get(f"{server.dicomweb}/studies/{study}/instances", timeout=30)
    return sorted(i["00080018"]["Value"][0] for i in found.json()) if found.status_code == 200 else []


@pytest.mark.parametrize("parallel, cut_at, cuts", [(1, 0.45, 1), (4, 0.1, 2)], ids=["one-archive", "four-archives"])
def test_an_upload_cut_mid_archive_is_resumed_by_the_client(server, cbct, tmp_path, parallel, cut_at, cuts):
    study, files = _retag(cbct, tmp_path / "ct")
    size = sum(p.stat().st_size for p in files)
    proxy = CuttingProxy(server.port, upstream=int(size * cut_at), cuts=cuts)
    try:
        client = GatewayClient(proxy.url, server.token, backoff=0.2)
        report = client.upload([tmp_path / "ct"], expected=100, parallel=parallel)
    finally:
        proxy.close()
    assert proxy.cut == cuts and report.attempts >= 2, report
    assert report.status == "complete" and report.counts["stored"] == 100 and not report.rejected, report.counts
    assert report.studies == [study]
    expected = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files)
    assert _instances(server, study) == expected  # every instance stored exactly once
    names = [e["name"] for e in report.entries if e["outcome"] == "stored"]
    assert len(names) == len(set(names)) == 100
    parts = {e["part"] for e in report.entries}
    assert len(parts) >= parallel + 1, client.status(report.upload_id)["parts"]  # the archives sent at once, then the resumed one(s)


def test_the_cli_uploads_and_reports(server, tmp_path):
    study = generate_uid()
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(dicom_instance(study, size=16))
    (folder / "b.dcm").write_bytes(dicom_instance(study, size=16, seed=1))
    (folder / "bad.dcm").write_bytes(b"not dicom at all" * 20)
    (folder / "a.prj").write_bytes(b"<project/>")
    env = {**os.environ, "GATEWAY_URL": server.url, "GATEWAY_TOKEN": server.token}
    run = subprocess.run([sys.executable, "-m", "proprietary.cli", "--quiet", "upload", str(folder)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # one entry was rejected
    assert "2 stored" in run.stdout and "1 rejected" in run.stdout and "1 sidecar" in run.stdout, run.stdout
    assert "rejected case/bad.dcm:" in run.stderr and f"study {study}" in run.stdout
    upload_id = run.stdout.split()[1]
    status = subprocess.run([sys.executable, "-m", "proprietary.cli", "status", upload_id], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "complete" in status.stdout and "case/a.prj" in status.stdout
    events = subprocess.run([sys.executable, "-m", "proprietary.cli", "events", upload_id], env=env,
                            capture_output=True, text=True, timeout=60)
    assert events.returncode == 0 and events.stdout.strip().splitlines()[-1].startswith('{"event": "complete"')
    good = subprocess.run([sys.executable, "-m", "proprietary.cli", "--quiet", "upload", str(folder / "a.dcm")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and "1 duplicate" in good.stdout, good.stdout
    missing = subprocess.run([sys.executable, "-m", "proprietary.cli", "upload", str(folder)],
                             env={**env, "GATEWAY_TOKEN": ""}, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no token" in missing.stderr


def _sops_in(folder: Path) -> dict[str, bytes]:
    """SOP Instance UID → bytes of every DICOM file under ``folder``."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if data[128:132] == b"DICM":
                try:
                    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                except Exception:  # noqa: BLE001 - a test file without one (DICOMDIR, broken ones)
                    continue
                found[sop] = data
    return found


def test_a_cbct_and_the_test_files_round_trip_through_the_cli(fresh_server, cbct, tmp_path):
    """On a server of its own: pydicom's files hold several encodings of one SOP Instance
    (only the first is stored), which would stand in the way of other modules' tests."""
    import shutil

    from tests.data import all_files

    server = fresh_server.start()

    study, files = _retag(cbct, tmp_path / "src" / "cbct")
    others = tmp_path / "src" / "pydicom"
    others.mkdir()
    for i, path in enumerate(all_files()):
        shutil.copy(path, others / f"{i:03d}_{path.name}")
    env = {**os.environ, "GATEWAY_URL": server.url, "GATEWAY_TOKEN": server.token}
    up = subprocess.run([sys.executable, "-m", "proprietary.cli", "--quiet", "upload", str(tmp_path / "src" / "cbct"),
                         str(others)], env=env, capture_output=True, text=True, timeout=600)
    assert up.returncode in (0, 1), up.stdout + up.stderr
    studies = [line.split()[1] for line in up.stdout.splitlines() if line.startswith("study ")]
    assert study in studies
    import hashlib

    client = GatewayClient(server.url, server.token)
    listing = client.status(up.stdout.split()[1])
    stored = [e for e in listing["entries"] if e["outcome"] == "stored"]
    assert sum(1 for e in stored if e["name"].startswith("cbct/")) == 100
    assert up.returncode == (1 if listing["counts"]["rejected"] else 0)  # some test files are not valid DICOM
    downloaded: dict[str, bytes] = {}
    for uid in studies:
        run = subprocess.run([sys.executable, "-m", "proprietary.cli", "--quiet", "download", uid, "-o",
                              str(tmp_path / "out"), "--unzip"], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        downloaded.update(_sops_in(Path(run.stdout.strip())))
    assert len(stored) >= 150
    for entry in stored:  # byte-identical both ways: what was sent is what comes back
        source = (tmp_path / "src" / entry["name"]).read_bytes()
        assert hashlib.sha256(source).hexdigest() == entry["sha256"]
        assert downloaded[entry["sop_instance_uid"]] == source, entry["name"]


def test_a_download_cut_mid_transfer_is_resumed_by_the_client(server, cbct, tmp_path):
    study, files = _retag(cbct, tmp_path / "ct")
    report = GatewayClient(server.url, server.token).upload([tmp_path / "ct"])
    assert report.counts["stored"] == 100
    whole = GatewayClient(server.url, server.token).download(study, tmp_path / "whole")
    proxy = CuttingProxy(server.port, downstream=whole.stat().st_size // 3, cuts=2)
    try:
        resumed = GatewayClient(proxy.url, server.token, backoff=0.2).download(study, tmp_path / "resumed")
    finally:
        proxy.close()
    assert proxy.cut == 2
    assert resumed.read_bytes() == whole.read_bytes()
    ordered = sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    series = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    first = GatewayClient(server.url, server.token).download(study, tmp_path / "first", series=series, slices="1-1",
                                                             unzip=True)
    assert list(_sops_in(first).values()) in ([ordered[0].read_bytes()], [ordered[-1].read_bytes()])
