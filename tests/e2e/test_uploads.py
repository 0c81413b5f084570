"""Zip uploads against a real ``gateway serve``, over real sockets: a CBCT and the pydicom test
files in one streamed archive, byte-identical afterwards; a connection cut mid-archive and
resumed; the Server-Sent Events of an upload; who may upload."""
from __future__ import annotations

import io
import json
import socket
import threading
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from stream_zip import ZIP_64, stream_zip

from gateway.synthetic import write_cbct
from tests.data import all_files
from tests.services import dicom_instance, retrieve_parts

pytestmark = pytest.mark.e2e

MODIFIED = time.localtime()[:6]


def _zip_stream(entries: list[tuple[str, Path]]):
    """A zip archive made on the fly from files, as a client streams one (stream-zip, deflate)."""
    from datetime import datetime

    when = datetime(*MODIFIED)

    def members():
        for name, path in entries:
            def chunks(path=path):
                with path.open("rb") as fh:
                    while chunk := fh.read(64 * 1024):
                        yield chunk
            yield name, when, 0o600, ZIP_64, chunks()

    return stream_zip(members())


def _dicom(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM, or broken: the upload says so
        return None


@pytest.fixture(scope="module")
def cbct(tmp_path_factory) -> list[Path]:
    return write_cbct(tmp_path_factory.mktemp("cbct"), n_slices=100, size=64)


def test_a_cbct_and_the_test_files_round_trip_byte_identical(server, cbct, tmp_path):
    files = [(f"cbct/{p.name}", p) for p in cbct] + [(f"pydicom/{i:03d}_{p.name}", p)
                                                     for i, p in enumerate(all_files())]
    opened = server.http.post(f"{server.url}/api/v1/uploads", json={"client": "e2e"}, timeout=30)
    assert opened.status_code == 201, opened.text
    urls = opened.json()["urls"]
    # Streamed (chunked: the length is not known in advance), as a client zipping on the fly does.
    response = server.http.put(urls["archive"], data=_zip_stream(files), timeout=600,
                               headers={"Content-Type": "application/zip"})
    assert response.status_code == 200, response.text[:500]
    result = response.json()
    by_name = {e["name"]: e for e in result["entries"]}
    assert set(by_name) == {name for name, _ in files}
    assert all(by_name[name]["outcome"] == "stored" for name, _ in files[:100])  # the CBCT
    checked = 0
    for name, path in files:
        entry = by_name[name]
        assert entry["outcome"] in ("stored", "duplicate", "rejected", "skipped", "replaced"), entry
        if entry["outcome"] == "rejected":
            assert entry["reason"] and entry["failure_reason"], entry
            continue
        if entry["outcome"] == "skipped":
            assert path.read_bytes()[128:132] != b"DICM" or path.name == "DICOMDIR", entry
            continue
        ds = _dicom(path)
        if entry["outcome"] in ("stored", "duplicate"):  # duplicate: the same file, stored by an earlier test
            [stored] = retrieve_parts(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/"
                                      f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                                      headers=server.auth_headers)
            assert stored == path.read_bytes(), name  # stored as received
            checked += 1
    assert checked >= 150
    listing = server.http.get(urls["self"], timeout=30).json()
    assert listing["counts"]["stored"] == result["counts"]["stored"] and listing["bytes_received"] == result["bytes"]
    done = server.http.post(urls["complete"], timeout=30)
    assert done.status_code == 200 and done.json()["status"] == "complete"


def _send_partially(server, path: str, body: bytes, cut: int) -> None:
    """PUT with a Content-Length, send ``cut`` bytes of the body, then drop the connection."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        head = (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
                f"Content-Type: application/zip\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock.sendall(head + body[:cut])
        time.sleep(0.5)
    finally:
        sock.close()


def test_a_connection_cut_mid_archive_is_resumed_from_the_listing(server, cbct):
    study, series = generate_uid(), generate_uid()
    fresh = []  # the same CBCT under a new study, so this test counts only its own instances
    for path in cbct[:60]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        fresh.append((f"{path.stem}.dcm", out.getvalue(), ds.SOPInstanceUID))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, _ in fresh:
            archive.writestr(name, data)
    body = buf.getvalue()
    opened = server.http.post(f"{server.url}/api/v1/uploads", json={"expected_instances": 60}, timeout=30).json()
    _send_partially(server, f"/api/v1/uploads/{opened['id']}/archive", body, int(len(body) * 0.6))

    def listed():
        return server.http.get(opened["urls"]["self"], timeout=30).json()

    deadline = time.monotonic() + 30  # the server finishes what it read before the cut, then says so
    while time.monotonic() < deadline and listed()["parts"][0]["state"] == "receiving":
        time.sleep(0.2)
    listing = listed()
    assert listing["parts"][0]["state"] in ("lost", "refused"), listing["parts"]  # cut off: either way
    done = {e["name"] for e in listing["entries"] if e["outcome"] in ("stored", "duplicate")}
    assert 0 < len(done) < 60, listing["counts"]  # what was complete before the cut is stored
    assert listing["parts"][0]["consumed"] <= int(len(body) * 0.6)
    # Resume: a new archive with what the listing does not show, and, to be sure, one already stored.
    again = io.BytesIO()
    resent = sorted(done)[0]
    with zipfile.ZipFile(again, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, _ in fresh:
            if name not in done or name == resent:
                archive.writestr(name, data)
    response = server.http.put(opened["urls"]["archive"], data=again.getvalue(), timeout=120,
                               headers={"Content-Type": "application/zip"})
    assert response.status_code == 200, response.text[:300]
    outcomes = {e["name"]: e["outcome"] for e in response.json()["entries"]}
    assert outcomes.pop(resent) == "duplicate" and set(outcomes.values()) == {"stored"}
    completed = server.http.post(opened["urls"]["complete"], timeout=30)
    assert completed.status_code == 200, completed.text
    found = server.http.get(f"{server.dicomweb}/studies/{study}/instances", timeout=30).json()
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(sop for _, _, sop in fresh)  # each once


def follow(url: str, headers: dict, into: list, until: str = "complete") -> threading.Thread:
    """Read an SSE stream in a thread, appending (event, data) pairs, until ``until``."""
    def run():
        with requests.get(url, headers={**headers, "Accept": "text/event-stream"}, stream=True, timeout=120) as r:
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    into.append((event, json.loads(line[6:])))
                    if event == until:
                        return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_events_follow_an_upload_as_it_happens(server, cbct):
    opened = server.http.post(f"{server.url}/api/v1/uploads", json={}, timeout=30).json()
    seen: list = []
    watcher = follow(opened["urls"]["events"], server.auth_headers, seen)
    time.sleep(0.5)
    files = [(f"{i:03d}.dcm", p) for i, p in enumerate(cbct[:20])]
    body = b"".join(_zip_stream(files))
    assert server.http.put(opened["urls"]["archive"], data=body, timeout=60,
                           headers={"Content-Type": "application/zip"}).status_code == 200
    assert server.http.post(opened["urls"]["complete"], timeout=30).status_code == 200
    watcher.join(60)
    assert not watcher.is_alive(), seen
    entries = [d for e, d in seen if e == "entry"]
    assert [d["name"] for d in entries] == [name for name, _ in files]
    assert entries[-1]["done"] == 20 and all(d["outcome"] in ("stored", "duplicate") for d in entries)
    assert [e for e, _ in seen][-2:] == ["part", "complete"]


def test_who_may_upload(server):
    link_share_token = "gwl_" + "x" * 43
    refused = requests.post(f"{server.url}/api/v1/uploads", json={}, timeout=30,
                            headers={"Authorization": f"Bearer {link_share_token}"})
    assert refused.status_code == 401
    support = server.session(server.token_for(roles=("support",)))
    assert support.post(f"{server.url}/api/v1/uploads", json={}, timeout=30).status_code == 403
    mine = server.http.post(f"{server.url}/api/v1/uploads", json={}, timeout=30).json()
    other = server.session(server.token_for(clinic="another-clinic", roles=("doctor",)))
    assert other.get(mine["urls"]["self"], timeout=30).status_code == 404
    assert other.put(mine["urls"]["archive"], data=b"PK\x05\x06" + b"\0" * 18, timeout=30,
                     headers={"Content-Type": "application/zip"}).status_code == 404


def test_a_hostile_archive_over_the_wire(server):
    study = generate_uid()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("ok.dcm", dicom_instance(study, size=16))
        archive.writestr("../../etc/cron.d/evil.dcm", dicom_instance(study, size=16, seed=1))
    response = server.http.post(f"{server.url}/api/v1/uploads", data=buf.getvalue(), timeout=30,
                                headers={"Content-Type": "application/zip"})
    assert response.status_code == 400
    body = response.json()
    assert body["errors"]["rule"] == "path-traversal" and body["errors"]["entry"] == "../../etc/cron.d/evil.dcm"
    found = server.http.get(f"{server.dicomweb}/studies/{study}/instances", timeout=30)
    assert len(found.json()) == 1  # ok.dcm, not the evil one
