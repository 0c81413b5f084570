"""Sidecars end to end: ``gateway export-sidecars`` beside the zip layout, ``gateway import-prj``
(converted / skipped / failed, the XML kept, a re-run changes nothing), the ``.prj`` files of a
zip upload imported when it completes, and the metadata API on the DynamoDB store (table made
by ``gateway metadata-table create``) — each against a real ``gateway serve``."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.services import dicom_instance, env_of, stow

pytestmark = pytest.mark.e2e

API = "/api/v1/metadata"
PRJ = b"""<?xml version="1.0" encoding="utf-8"?>
<Project version="1">
  <ViewerState><Rotation>270</Rotation><Zoom>1.5</Zoom><Window center="300" width="1800"/></ViewerState>
  <Tags><Tag>from-prj</Tag></Tags>
  <Annotations><Annotation id="a1" type="line"><Point x="1" y="2"/><Point x="3" y="4"/></Annotation></Annotations>
  <Toolbar layout="2x2"/>
</Project>"""


def _cli(server, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env={**server.env, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_export_sidecars(server, tmp_path):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert stow(server.url, [dicom_instance(study, series, sop)], headers=server.auth_headers).status_code == 200
    url = f"{server.url}{API}/{study}/{series}/{sop}"
    assert server.http.put(f"{url}/original", json={"tags": ["export"]}, headers={"If-None-Match": "*"}).ok
    assert server.http.put(f"{url}/preview", json={"viewerState": {"zoom": 4}}, headers={"If-None-Match": "*"}).ok
    run = _cli(server, "export-sidecars", str(tmp_path / "out"), "--study", study, "--quiet")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2 written, 0 failed"
    folder = tmp_path / "out" / "SHARED-1" / f"20240506_{study}" / f"0_{series}"
    assert sorted(p.name for p in folder.iterdir()) == ["0001.json", "0001.preview.json"]
    original = json.loads((folder / "0001.json").read_text())
    assert original["tags"] == ["export"] and original["image"] == f"SHARED-1/20240506_{study}/0_{series}/0001.dcm"
    assert json.loads((folder / "0001.preview.json").read_text())["viewerState"]["zoom"] == 4
    assert original == server.http.get(f"{url}/original/sidecar").json()
    again = _cli(server, "export-sidecars", str(tmp_path / "out"), "--study", study, "--quiet")
    assert again.returncode == 0 and json.loads((folder / "0001.json").read_text()) == original


def test_import_prj(server, tmp_path):
    folder = tmp_path / "legacy"
    folder.mkdir()
    study = generate_uid()
    keys = []
    for name in ("IMG0001", "IMG0002"):
        series, sop = generate_uid(), generate_uid()
        (folder / f"{name}.dcm").write_bytes(dicom_instance(study, series, sop))
        keys.append(f"{study}/{series}/{sop}/original")
    assert _cli(server, "import", str(folder), "--quiet").returncode == 0
    (folder / "IMG0001.prj").write_bytes(PRJ)
    (folder / "IMG0002.prj").write_bytes(b"<Project><ViewerState>")  # broken XML
    (folder / "lonely.prj").write_bytes(PRJ)  # no image beside it
    elsewhere = tmp_path / "not-stored"
    elsewhere.mkdir()
    (elsewhere / "X.dcm").write_bytes(dicom_instance(generate_uid()))
    (elsewhere / "X.prj").write_bytes(PRJ)

    run = _cli(server, "import-prj", str(folder), str(elsewhere), "--jobs", "3", "--quiet")
    assert run.returncode == 1, run.stderr
    assert run.stdout.strip() == "1 converted, 0 skipped, 3 failed"
    assert "lonely.prj: no image with the same name beside it" in run.stderr
    assert "IMG0002.prj" in run.stderr and "not XML" in run.stderr
    assert "X.prj" in run.stderr and "is not stored in clinic default" in run.stderr

    record = server.http.get(f"{server.url}{API}/{keys[0]}").json()
    assert record["viewerState"]["rotation"] == 270 and record["viewerState"]["window"] == {"center": 300,
                                                                                            "width": 1800}
    assert record["tags"] == ["from-prj"] and record["annotations"][0]["points"] == [[1, 2], [3, 4]]
    assert record["source"]["prj"]["name"] == "IMG0001.prj" and record["source"]["prj"]["ignored"] == ["toolbar"]
    kept = list((server.data_dir / "blobs" / "metadata" / "default" / study).rglob("prj-*.xml"))
    assert [p.read_bytes() for p in kept] == [PRJ]  # the original XML, as it was

    again = _cli(server, "import-prj", str(folder), "--quiet")
    assert again.stdout.strip() == "0 converted, 1 skipped, 2 failed"
    assert "unchanged (imported before)" in again.stderr
    assert server.http.get(f"{server.url}{API}/{keys[0]}").json() == record  # nothing changed
    assert [v["version"] for v in server.http.get(f"{server.url}{API}/{keys[0]}/history").json()["versions"]] == [1]


def test_prj_in_a_zip_upload(server):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("case/IMG0001.dcm", dicom_instance(study, series, sop))
        archive.writestr("case/IMG0001.prj", PRJ)
        archive.writestr("case/orphan.prj", PRJ)
    opened = server.http.post(f"{server.url}/api/v1/uploads", data=buffer.getvalue(),
                              headers={"Content-Type": "application/zip"})
    assert opened.status_code == 201, opened.text
    upload = opened.json()["upload"]["id"] if "upload" in opened.json() else opened.json()["id"]
    done = server.http.post(f"{server.url}/api/v1/uploads/{upload}/complete")
    assert done.status_code == 200, done.text
    events = server.http.get(f"{server.url}/api/v1/uploads/{upload}/events", headers={"Accept": "text/event-stream"},
                             stream=True, timeout=30)
    complete = None
    for line in events.iter_lines(decode_unicode=True):
        if line.startswith("data:") and '"metadata"' in line:
            complete = json.loads(line[5:])
            break
    events.close()
    assert complete["metadata"] == {"converted": 1, "failed": 1}
    record = server.http.get(f"{server.url}{API}/{study}/{series}/{sop}/original").json()
    assert record["tags"] == ["from-prj"] and record["source"]["prj"]["name"] == "IMG0001.prj"


@pytest.mark.dynamodb
def test_the_api_on_dynamodb(tmp_path, moto_server):
    from tests.conftest import ServerProcess

    dynamo = moto_server.dynamodb_settings()
    server = ServerProcess(tmp_path / "data", env=env_of({**dynamo, "storage.fsync": "false"}))
    table = dynamo["storage.dynamodb_table"]
    made = _cli(server, "metadata-table", "create")
    assert made.returncode == 0 and made.stdout.strip() == f"created table {table}"
    assert _cli(server, "metadata-table", "create").stdout.strip().endswith("exists already")
    # a table of an older version, without the shared-state index: create adds it
    import boto3

    client = boto3.client("dynamodb", endpoint_url=moto_server.endpoint_url, region_name=dynamo[
        "storage.dynamodb_region"], aws_access_key_id=dynamo["storage.dynamodb_access_key_id"],
        aws_secret_access_key=dynamo["storage.dynamodb_secret_access_key"])
    client.update_table(TableName=table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by_shared"}}])
    upgraded = _cli(server, "metadata-table", "create")
    assert upgraded.returncode == 0 and "added index by_shared" in upgraded.stdout, upgraded.stderr
    server.start()
    try:
        study, series, sop, sop2 = generate_uid(), generate_uid(), generate_uid(), generate_uid()
        assert stow(server.url, [dicom_instance(study, series, sop), dicom_instance(study, series, sop2)],
                    headers=server.auth_headers).ok
        url = f"{server.url}{API}/{study}/{series}/{sop}/original"
        assert server.http.put(url, json={"tags": ["dyn"]}, headers={"If-None-Match": "*"}).status_code == 201
        patched = server.http.patch(f"{url}/viewer-state", json={"zoom": 3}, headers={"If-Match": '"1"'})
        assert patched.status_code == 200 and patched.headers["ETag"] == '"2"'
        stale = server.http.patch(f"{url}/viewer-state", json={"zoom": 4}, headers={"If-Match": '"1"'})
        assert stale.status_code == 412 and stale.json()["current"]["viewerState"]["zoom"] == 3
        assert [r["objectKey"] for r in server.http.get(f"{server.url}{API}", params={"tag": "dyn"}).json()[
            "records"]] == [f"{study}/{series}/{sop}/original"]
        assert server.http.get(f"{server.url}/readyz").json()["checks"]["metadata"] == "ok"

        # the share state: mirrored into the item, found through the by_shared index
        def item(sop_uid: str) -> dict:
            return client.get_item(TableName=table, Key={"pk": {"S": f"default#{study}"},
                                                         "sk": {"S": f"{series}#{sop_uid}#original"}}).get("Item")

        assert "gsi_shared" not in item(sop)
        made = server.http.post(f"{server.url}/api/v1/shares", json={"study": study, "targets": [
            {"type": "clinic", "id": "lab-dyn"}]})
        assert made.status_code == 201, made.text
        assert item(sop)["gsi_shared"] == {"S": "default"} and item(sop)["version"] == {"N": "2"}
        shared = server.http.get(f"{server.url}{API}", params={"shared": "true"}).json()["records"]
        assert [r["objectKey"] for r in shared] == [f"{study}/{series}/{sop}/original"]
        assert shared[0]["share"]["targets"][0]["id"] == "lab-dyn" and shared[0]["version"] == 2
        assert server.http.delete(f"{server.url}/api/v1/shares/{made.json()['shares'][0]['id']}").status_code == 204
        assert "gsi_shared" not in item(sop)
        assert server.http.get(f"{server.url}{API}", params={"shared": "true"}).json()["records"] == []

        # an instance delete takes its records, not the series' others
        url2 = f"{server.url}{API}/{study}/{series}/{sop2}/original"
        assert server.http.put(url2, json={"tags": ["dyn"]}, headers={"If-None-Match": "*"}).status_code == 201
        deleted = server.http.delete(f"{server.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}")
        assert deleted.status_code == 204
        assert server.http.get(url).status_code == 404 and item(sop) is None
        assert server.http.get(url2).status_code == 200
    finally:
        server.stop()


def test_metadata_table_create_on_sql_says_so(server):
    run = _cli(server, "metadata-table", "create")
    assert run.returncode == 1 and "gateway migrate" in run.stderr
    assert Path(server.data_dir).exists()
