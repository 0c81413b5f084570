"""Zip uploads in process: entry outcomes, and every kind of hostile or broken archive gets a
precise 4xx naming the entry and the rule, with nothing of the bad entry stored and what came
before it kept. (Real clients over real sockets: tests/e2e/test_uploads.py.)"""
from __future__ import annotations

import io
import struct
import zipfile

import pytest
from pydicom.uid import generate_uid

from gateway.config import load_settings
from gateway.services.uploads import ArchiveRefused, central_directory, check_name
from tests.services import dicom_instance

KB, MB = 1024, 1024 * 1024


@pytest.fixture
def app(tmp_path):
    from gateway.app import create_app

    settings = load_settings(overrides={
        "storage.data_dir": str(tmp_path / "data"), "log.level": "warning", "storage.fsync": False,
        "upload.max_entry_bytes": 2 * MB, "upload.max_total_bytes": 6 * MB, "upload.max_compression_ratio": 50,
        "upload.ratio_check_after": 256 * KB, "upload.max_entries": 40}, environ={})
    app = create_app(settings)
    yield app
    app.extensions["gateway"].close()


@pytest.fixture
def doctor(auth):
    return auth.headers(clinic="default", user="dr.zip", roles=["doctor"])


def make_zip(entries: list[tuple[str, bytes]], method=zipfile.ZIP_DEFLATED, **info) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in entries:
            item = zipfile.ZipInfo(name, date_time=(2024, 5, 6, 9, 0, 0))
            item.compress_type = method
            for key, value in info.get(name, {}).items():
                setattr(item, key, value)
            archive.writestr(item, data)
    return buf.getvalue()


def instances(study: str, n: int, size: int = 16) -> list[tuple[str, bytes]]:
    series = generate_uid()
    return [(f"cbct/{i:03d}.dcm", dicom_instance(study, series, size=size, seed=i)) for i in range(n)]


def upload(http, headers, body: bytes, **params):
    return http.post("/api/v1/uploads", data=body, query_string=params,
                     headers={**headers, "Content-Type": "application/zip"})


def stored(app, study: str) -> list[str]:
    """SOP Instance UIDs of the study in the index, and check each has its blob."""
    services = app.extensions["gateway"]
    records = services.index.instances("default", study)
    for record in records:
        assert services.blobs.exists(record.blob_key)
    return [r.sop_uid for r in records]


def dicom_blobs(app) -> set[str]:
    return set(app.extensions["gateway"].blobs.keys("dicom/"))


def sop_of(data: bytes) -> str:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID


# --- outcomes ------------------------------------------------------------------------------------

def test_every_entry_gets_an_outcome(app, client, doctor):
    study = generate_uid()
    cbct = instances(study, 3)
    conflicting = dicom_instance(study, sop=sop_of(cbct[0][1]), size=16, seed=99)  # same UID, other bytes
    body = make_zip([*cbct, ("cbct/000.prj", b"<project/>"), ("cbct/view.json", b'{"zoom": 2}'),
                     ("DICOMDIR", b"\0" * 200), ("readme.txt", b"hello"), ("folder/", b""),
                     ("again/000.dcm", cbct[0][1]), ("conflict.dcm", conflicting), ("broken.dcm", b"x" * 300)])
    response = upload(client, doctor, body, **{"expected_instances": 3, "client": "test-suite"})
    assert response.status_code == 201, response.get_json()
    result = response.get_json()
    outcomes = {e["name"]: e["outcome"] for e in result["entries"]}
    assert outcomes == {"cbct/000.dcm": "stored", "cbct/001.dcm": "stored", "cbct/002.dcm": "stored",
                        "DICOMDIR": "skipped", "readme.txt": "skipped", "again/000.dcm": "duplicate",
                        "conflict.dcm": "rejected", "broken.dcm": "rejected", "cbct/000.prj": "sidecar",
                        "cbct/view.json": "sidecar"}
    by_name = {e["name"]: e for e in result["entries"]}
    assert by_name["conflict.dcm"]["failure_reason"] == 0x0111 and "already stored" in by_name["conflict.dcm"]["reason"]
    assert by_name["broken.dcm"]["failure_reason"] == 0xC000
    assert by_name["cbct/001.dcm"]["sop_instance_uid"] == sop_of(cbct[1][1])
    assert result["counts"] == {"stored": 3, "duplicate": 1, "replaced": 0, "rejected": 2, "skipped": 2, "sidecar": 2}
    assert sorted(stored(app, study)) == sorted(sop_of(d) for _, d in cbct)
    upload_id = result["upload"]["id"]
    blobs = app.extensions["gateway"].blobs
    with blobs.open(f"uploads/default/{upload_id}/cbct/000.prj") as fh:
        assert fh.read() == b"<project/>"
    listing = client.get(f"/api/v1/uploads/{upload_id}", headers=doctor).get_json()
    assert [e["name"] for e in listing["entries"]] == [e["name"] for e in result["entries"]]
    assert listing["parts"] == [{"part": 1, "consumed": listing["parts"][0]["consumed"], "entries": 10, "state": "done"}]
    assert listing["client"] == "test-suite" and listing["expected_instances"] == 3
    done = client.post(f"/api/v1/uploads/{upload_id}/complete", headers=doctor)
    assert done.status_code == 200 and done.get_json()["status"] == "complete"
    assert client.post(f"/api/v1/uploads/{upload_id}/complete", headers=doctor).status_code == 200  # twice
    closed = client.put(f"/api/v1/uploads/{upload_id}/archive", data=body,
                        headers={**doctor, "Content-Type": "application/zip"})
    assert closed.status_code == 409 and "complete" in closed.get_json()["message"]


def test_expected_study_and_count(app, client, doctor):
    study, other = generate_uid(), generate_uid()
    opened = client.post("/api/v1/uploads", json={"study": study, "expected_instances": 3}, headers=doctor)
    assert opened.status_code == 201
    upload_id = opened.get_json()["id"]
    body = make_zip([*instances(study, 2), ("stray.dcm", dicom_instance(other, size=16))])
    part = client.put(f"/api/v1/uploads/{upload_id}/archive", data=body,
                      headers={**doctor, "Content-Type": "application/zip"})
    assert part.status_code == 200
    assert {e["name"]: e["outcome"] for e in part.get_json()["entries"]}["stray.dcm"] == "rejected"
    short = client.post(f"/api/v1/uploads/{upload_id}/complete", headers=doctor)
    assert short.status_code == 409 and "expects 3 instances and holds 2" in short.get_json()["message"]
    assert client.get(f"/api/v1/uploads/{upload_id}", headers=doctor).get_json()["status"] == "open"
    last = client.put(f"/api/v1/uploads/{upload_id}/archive", data=make_zip(instances(study, 1)[:1]),
                      headers={**doctor, "Content-Type": "application/zip"})
    assert last.status_code == 200 and last.get_json()["part"] == 2
    assert client.post(f"/api/v1/uploads/{upload_id}/complete", headers=doctor).get_json()["status"] == "complete"


def test_access(app, client, auth, doctor):
    made = client.post("/api/v1/uploads", json={}, headers=doctor).get_json()["id"]
    other = auth.headers(clinic="elsewhere", user="dr.b", roles=["doctor"])
    for method, path in (("GET", ""), ("PUT", "/archive"), ("POST", "/complete"), ("GET", "/events")):
        response = client.open(f"/api/v1/uploads/{made}{path}", method=method, headers={
            **other, "Content-Type": "application/zip"}, data=make_zip([]))
        assert response.status_code == 404, (method, path)
    assert client.get("/api/v1/uploads", headers=other).get_json()["uploads"] == []
    support = auth.headers(roles=["support"])
    assert client.post("/api/v1/uploads", json={}, headers=support).status_code == 403
    assert client.get(f"/api/v1/uploads/{made}", headers=support).status_code == 403
    staff = auth.headers(roles=["staff"])
    assert client.get(f"/api/v1/uploads/{made}", headers=staff).status_code == 200  # writers of the clinic
    assert client.post("/api/v1/uploads", data=b"{}", headers={**doctor, "Content-Type": "text/plain"}).status_code in (
        400, 415)
    assert client.put(f"/api/v1/uploads/{made}/archive", data=b"PK",
                      headers={**doctor, "Content-Type": "text/plain"}).status_code == 415
    assert client.get("/api/v1/uploads/nope", headers=doctor).status_code == 404


def test_an_open_upload_expires(app, client, doctor, monkeypatch):
    import gateway.services.uploads as uploads

    upload_id = client.post("/api/v1/uploads", json={}, headers=doctor).get_json()["id"]
    later = uploads.now_ms() + 2 * 86_400_000
    monkeypatch.setattr(uploads, "now_ms", lambda: later)
    assert client.get(f"/api/v1/uploads/{upload_id}", headers=doctor).get_json()["status"] == "expired"
    refused = client.put(f"/api/v1/uploads/{upload_id}/archive", data=make_zip([]),
                         headers={**doctor, "Content-Type": "application/zip"})
    assert refused.status_code == 409 and "expired" in refused.get_json()["message"]
    events = client.get(f"/api/v1/uploads/{upload_id}/events", headers=doctor).data.decode()
    assert "event: expired" in events


def test_events_tell_every_entry_and_the_completion(app, client, doctor):
    study = generate_uid()
    result = upload(client, doctor, make_zip(instances(study, 3) + [("x.txt", b"x")])).get_json()
    upload_id = result["upload"]["id"]
    client.post(f"/api/v1/uploads/{upload_id}/complete", headers=doctor)
    text = client.get(f"/api/v1/uploads/{upload_id}/events", headers=doctor).data.decode()
    blocks = [b for b in text.split("\n\n") if b.startswith("id:")]
    kinds = [b.split("\n")[1].removeprefix("event: ") for b in blocks]
    assert kinds == ["entry"] * 4 + ["part", "complete"]
    assert '"done":4' in blocks[3] and '"instances":3' in blocks[-1]
    second = blocks[2].split("\n")[0].removeprefix("id: ")
    again = client.get(f"/api/v1/uploads/{upload_id}/events", headers={**doctor, "Last-Event-ID": second})
    assert [b.split("\n")[1] for b in again.data.decode().split("\n\n") if b.startswith("id:")] == \
        ["event: entry", "event: part", "event: complete"]


# --- hostile and broken archives -------------------------------------------------------------

def refused(response, status: int, rule: str, entry: str | None) -> dict:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["code"] == status and body["errors"]["rule"] == rule, body
    assert body["errors"]["entry"] == entry, body
    if entry:
        assert repr(entry) in body["message"] or entry in body["message"], body
    return body


@pytest.mark.parametrize("name, rule", [
    ("../escape.dcm", "path-traversal"), ("cbct/../../escape.dcm", "path-traversal"),
    ("..\\windows.dcm", "path-traversal"), ("/etc/escape.dcm", "absolute-path"),
    ("C:/escape.dcm", "absolute-path"), ("\\\\server\\share.dcm", "absolute-path"),
])
def test_names_that_climb_out_or_are_absolute(app, client, doctor, name, rule):
    study = generate_uid()
    good = instances(study, 2)
    bad = dicom_instance(study, size=16, seed=7)
    body = refused(upload(client, doctor, make_zip([*good, (name, bad), ("after.dcm", dicom_instance(study))])),
                   400, rule, name)
    assert [e["name"] for e in body["errors"]["entries"]] == ["cbct/000.dcm", "cbct/001.dcm"]
    assert sorted(stored(app, study)) == sorted(sop_of(d) for _, d in good)  # before it: kept; it and after: not


def test_a_symlink_entry_is_refused_and_nothing_of_it_is_kept(app, client, doctor):
    """A symlink looks like a file until the central directory at the end: what it stored is undone."""
    study = generate_uid()
    good = instances(study, 2)
    link = dicom_instance(study, size=16, seed=5)  # valid DICOM bytes behind a symlink entry
    unix_link = {"create_system": 3, "external_attr": (0o120777 << 16)}
    body = make_zip([*good, ("cbct/link.dcm", link), ("cbct/link.json", b"{}")],
                    **{"cbct/link.dcm": unix_link, "cbct/link.json": unix_link})
    before = dicom_blobs(app)
    result = refused(upload(client, doctor, body), 400, "symlink", "cbct/link.dcm")
    assert "(and 1 more)" in result["message"]
    assert sorted(stored(app, study)) == sorted(sop_of(d) for _, d in good)
    assert sop_of(link) not in stored(app, study)
    assert len(dicom_blobs(app) - before) == 2  # the link's blob is gone too
    outcomes = {e["name"]: e["outcome"] for e in result["errors"]["entries"]}
    assert outcomes["cbct/link.dcm"] == "rejected" and outcomes["cbct/link.json"] == "rejected"
    assert not list(app.extensions["gateway"].blobs.keys("uploads/"))


def _set_flag(data: bytes, name: bytes, bit: int) -> bytes:
    """Set a general-purpose flag bit of an entry in its local and central headers."""
    out = bytearray(data)
    for signature, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = 0
        while (start := out.find(signature, start)) >= 0:
            if out[start + name_at:start + name_at + len(name)] == name:
                (flags,) = struct.unpack_from("<H", out, start + flag_at)
                struct.pack_into("<H", out, start + flag_at, flags | (1 << bit))
            start += 4
    return bytes(out)


def test_an_encrypted_entry(app, client, doctor):
    study = generate_uid()
    body = _set_flag(make_zip([*instances(study, 1), ("secret.dcm", dicom_instance(study))]), b"secret.dcm", 0)
    result = refused(upload(client, doctor, body), 400, "encrypted", "secret.dcm")
    assert len(result["errors"]["entries"]) == 1 and len(stored(app, study)) == 1


def test_an_unsupported_compression_method(app, client, doctor):
    study = generate_uid()
    body = make_zip([("lzma.dcm", dicom_instance(study))], method=zipfile.ZIP_LZMA)
    refused(upload(client, doctor, body), 400, "unsupported-compression", "lzma.dcm")
    assert stored(app, study) == []


def noise(size: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(size)  # does not compress


@pytest.mark.parametrize("entries, rule, entry", [
    ([("bomb.dcm", b"\0" * (1 * MB + 300 * KB))], "compression-ratio", "bomb.dcm"),  # ~1000:1, checked past 256 KiB
    ([("huge.bin", noise(2 * MB + 300 * KB))], "entry-too-large", "huge.bin"),  # > 2 MiB
    ([(f"part{i}.bin", noise(1800 * KB, i)) for i in range(4)], "archive-too-large", "part3.bin"),  # 7 MiB > 6 MiB
    ([(f"tiny{i}.txt", b"x") for i in range(41)], "too-many-entries", "tiny39.txt"),  # the 41st entry
], ids=["ratio", "entry", "total", "count"])
def test_zip_bombs_are_413(app, client, doctor, entries, rule, entry):
    study = generate_uid()
    good = instances(study, 1)
    body = refused(upload(client, doctor, make_zip([*good, *entries])), 413, rule, entry)
    assert body["errors"]["entries"][0]["name"] == "cbct/000.dcm"
    assert stored(app, study) == [sop_of(good[0][1])]
    assert not list(app.extensions["gateway"].blobs.keys("uploads/"))


def test_an_archive_cut_off_mid_entry(app, client, doctor):
    study = generate_uid()
    cbct = instances(study, 3, size=64)
    full = make_zip(cbct, method=zipfile.ZIP_STORED)
    third = full.find(b"PK\x03\x04", full.find(b"cbct/001.dcm") + 20)
    body = refused(upload(client, doctor, full[:third + 2000]), 400, "truncated", "cbct/002.dcm")
    assert [e["name"] for e in body["errors"]["entries"]] == ["cbct/000.dcm", "cbct/001.dcm"]
    assert sorted(stored(app, study)) == sorted(sop_of(d) for _, d in cbct[:2])


def test_an_archive_without_its_central_directory(app, client, doctor):
    study = generate_uid()
    full = make_zip(instances(study, 2) + [("notes.json", b"{}")])
    cut = full[:full.rfind(b"PK\x01\x02", 0, full.find(b"PK\x05\x06"))]
    cut = cut[:cut.find(b"PK\x01\x02")]
    body = refused(upload(client, doctor, cut), 400, "truncated", None)
    assert len(stored(app, study)) == 2  # complete and valid: kept
    sidecar = [e for e in body["errors"]["entries"] if e["name"] == "notes.json"]
    assert sidecar and sidecar[0]["outcome"] == "rejected" and "central directory" in sidecar[0]["reason"]


def test_a_crc_mismatch(app, client, doctor):
    study = generate_uid()
    good, bad = dicom_instance(study, seed=1), dicom_instance(study, seed=2)
    archive = bytearray(make_zip([("good.dcm", good), ("bad.dcm", bad)], method=zipfile.ZIP_STORED))
    data_at = archive.find(bad[200:232])
    archive[data_at] ^= 0xFF  # one byte of the stored data
    refused(upload(client, doctor, bytes(archive)), 400, "crc-mismatch", "bad.dcm")
    assert stored(app, study) == [sop_of(good)]


@pytest.mark.parametrize("garbage", [b"not a zip at all" * 100, b"", b"PK\x03\x04" + b"\xff" * 10],
                         ids=["text", "empty", "broken header"])
def test_garbage_is_not_a_zip(app, client, doctor, garbage):
    response = upload(client, doctor, garbage)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["errors"]["rule"] in ("not-a-zip", "truncated", "damaged", "unsupported-feature")
    assert not dicom_blobs(app)


def test_a_hidden_entry_in_the_central_directory(app, client, doctor):
    """The central directory lists an entry the local headers never showed (a smuggling trick)."""
    study = generate_uid()
    archive = make_zip([("a.dcm", dicom_instance(study)), ("b.dcm", dicom_instance(study, seed=3))])
    # rename b.dcm in its local header only: the central directory still names b.dcm
    first = archive.find(b"b.dcm")
    archive = archive[:first] + b"c.dcm" + archive[first + 5:]
    refused(upload(client, doctor, archive), 400, "hidden-entry", "b.dcm")


# --- the pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.dcm", "cbct/001.dcm", "deep/er/x.prj", "ünïcode/bild.dcm", "a..b.dcm"])
def test_fine_names(name):
    check_name(name)


@pytest.mark.parametrize("name", ["", "a/../../b", "/abs", "\\abs", "D:\\x", "x\n.dcm", "a" * 1100])
def test_refused_names(name):
    with pytest.raises(ArchiveRefused):
        check_name(name)


def test_the_central_directory_shows_modes_and_zip64():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as archive:
        link = zipfile.ZipInfo("link")
        link.create_system, link.external_attr = 3, 0o120777 << 16
        archive.writestr(link, b"target")
        archive.writestr("file.txt", b"x")
        with archive.open("forced64.bin", "w", force_zip64=True) as fh:
            fh.write(b"y")
    data = buf.getvalue()
    entries = central_directory(data, 0)
    assert [(e.name, e.symlink) for e in entries] == [("link", True), ("file.txt", False), ("forced64.bin", False)]
    with pytest.raises(ArchiveRefused, match="larger than upload.max_central_directory"):
        central_directory(data[-60:], len(data) - 60)


def test_completion_fires_the_hook_and_everything_is_audited(app, client, doctor):
    from plugins.hookspecs import hookimpl
    from storage.records import AuditQuery

    heard = []

    class Listener:
        @hookimpl
        def upload_completed(self, upload, series, settings, jobs):
            heard.append((upload.id, series))

    services = app.extensions["gateway"]
    services.pm.register(Listener(), name="test-listener")
    try:
        study = generate_uid()
        cbct = instances(study, 2)
        upload_id = upload(client, doctor, make_zip(cbct)).get_json()["upload"]["id"]
        assert heard == []
        client.post(f"/api/v1/uploads/{upload_id}/complete", headers=doctor)
        client.post(f"/api/v1/uploads/{upload_id}/complete", headers=doctor)  # once only
    finally:
        services.pm.unregister(name="test-listener")
    series = services.index.instances("default", study)[0].series_uid
    assert heard == [(upload_id, [(study, series)])]
    records = services.audit.search(AuditQuery(user_id="dr.zip"))
    seen = {(r.action, r.resource) for r in records}
    assert ("store", f"upload:{upload_id}") in seen and ("store", f"study:{study}") in seen
    assert all(r.door == "api" for r in records if r.resource.startswith("upload:"))
