"""Image metadata against a real ``gateway serve`` over HTTP: the locking protocol (428, 412
with the current record, If-None-Match: *), 50 concurrent PATCHes of one record, history,
annotations offloaded to the blob store, search, the share state, sidecars, another clinic's
404 on every endpoint (audited), and the records going with their study."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pydicom.uid import generate_uid

from tests.services import dicom_instance, stow

pytestmark = pytest.mark.e2e

API = "/api/v1/metadata"


@pytest.fixture(scope="module")
def image(server):
    """One stored CT instance (instance number 1) of a study of its own, and its object key."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    response = stow(server.url, [dicom_instance(study, series, sop, patient="Meta^Data")],
                    headers=server.auth_headers)
    assert response.status_code == 200, response.text
    return f"{study}/{series}/{sop}/original"


def _new_image(server, *, patient: str = "Meta^Other") -> str:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert stow(server.url, [dicom_instance(study, series, sop, patient=patient)],
                headers=server.auth_headers).status_code == 200
    return f"{study}/{series}/{sop}/original"


def _create(http, url: str, body: dict | None = None):
    response = http.put(url, json=body or {}, headers={"If-None-Match": "*"})
    assert response.status_code == 201, response.text
    return response


def test_locking_protocol(server, image):
    http, url = server.http, f"{server.url}{API}/{image}"
    assert http.get(url).status_code == 404  # an image without metadata yet
    missing = http.put(url, json={"tags": ["x"]})
    assert missing.status_code == 428
    assert missing.json()["code"] == 428 and "If-Match" in missing.json()["message"]
    assert http.get(url).status_code == 404  # nothing stored

    created = _create(http, url, {"tags": ["implant"], "viewerState": {"zoom": 2}})
    assert created.headers["ETag"] == '"1"'
    doc = created.json()
    assert (doc["version"], doc["type"], doc["tags"], doc["clinic"], doc["variant"]) == \
        (1, "CT", ["implant"], "default", "original")
    assert doc["viewerState"]["zoom"] == 2 and doc["viewerState"]["rotation"] == 0
    assert (doc["patientId"], doc["studyDate"], doc["objectKey"]) == ("SHARED-1", "20240506", image)
    assert doc["share"] == {"targets": [], "expiresAt": None}

    again = http.put(url, json={"tags": ["other"]}, headers={"If-None-Match": "*"})
    assert again.status_code == 412 and again.json()["current"]["tags"] == ["implant"]

    got = http.get(url)
    assert got.status_code == 200 and got.headers["ETag"] == '"1"' and got.json() == doc

    updated = http.put(url, json={"tags": ["implant", "molar"]}, headers={"If-Match": '"1"'})
    assert updated.status_code == 200 and updated.headers["ETag"] == '"2"'
    assert updated.json()["viewerState"]["zoom"] == 2  # left out: kept
    stale = http.put(url, json={"tags": ["lost?"]}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"2"'
    assert stale.json()["current"]["tags"] == ["implant", "molar"] and "version 2" in stale.json()["message"]

    patched = http.patch(f"{url}/viewer-state", json={"window": {"center": 400, "width": 2000}, "rotation": 90},
                         headers={"If-Match": '"2"'})
    assert patched.status_code == 200, patched.text
    assert patched.json()["viewerState"] == {"rotation": 90, "zoom": 2, "window": {"center": 400, "width": 2000},
                                             "pan": {"x": 0, "y": 0}, "flip": {"horizontal": False,
                                                                               "vertical": False}}
    assert patched.headers["ETag"] == '"3"'
    # a 412 is the store's answer, not its failure: timed on /metrics, never counted as an error
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'gateway_store_operation_seconds_count{operation="put",store="metadata"}' in metrics
    assert not [line for line in metrics.splitlines()
                if line.startswith("gateway_store_errors_total") and 'store="metadata"' in line]


@pytest.mark.parametrize("request_kw, status, names", [
    ({"json": {"zoom": -1}}, 400, "zoom"),
    ({"json": {"zoom": 2, "colour": "red"}}, 400, "colour"),
    ({"json": {"window": {"center": "high"}}}, 400, "center"),
    ({"json": {}}, 400, "changes nothing"),
    ({"json": {"zoom": 2}, "headers": {"If-Match": "3"}}, 400, "If-Match"),
    ({"json": {"zoom": 2}, "headers": {"If-Match": "*"}}, 400, "If-Match"),
    ({"json": {"zoom": 2}, "headers": {}}, 428, "If-Match"),
])
def test_bad_writes_change_nothing(server, request_kw, status, names):
    http = server.http
    url = f"{server.url}{API}/{_new_image(server)}"
    _create(http, url)
    kw = {"headers": {"If-Match": '"1"'}, **request_kw}
    response = http.patch(f"{url}/viewer-state", **kw)
    assert response.status_code == status, response.text
    assert names in response.text
    assert http.get(url).json()["version"] == 1


def test_bad_keys_and_bodies(server, image):
    http = server.http
    study, series, sop, _ = image.split("/")
    for key, word in ((f"{study}/{series}/{sop}/thumbnail", "variant"), (f"{study}/x.y/{sop}/original", "series")):
        response = http.get(f"{server.url}{API}/{key}")
        assert response.status_code == 400 and word in response.json()["message"]
    response = http.put(f"{server.url}{API}/{image}", json={"tags": "implant"}, headers={"If-Match": '"1"'})
    assert response.status_code == 400 and "tags" in response.json()["message"]
    unknown = f"{study}/{series}/{generate_uid()}/original"  # an instance the clinic does not hold
    response = http.put(f"{server.url}{API}/{unknown}", json={}, headers={"If-None-Match": "*"})
    assert response.status_code == 404


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory, postgres_database):
    """A gateway whose index, and so metadata, is in PostgreSQL."""
    from tests.conftest import ServerProcess
    from tests.services import env_of

    srv = ServerProcess(tmp_path_factory.mktemp("pg-meta") / "data",
                        env=env_of({"storage.index_backend": "postgresql",
                                    "storage.postgres_dsn": postgres_database.new_schema(), "storage.fsync": "false"}))
    yield srv.start()
    srv.stop()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_50_concurrent_patches_lose_nothing(request, store):
    """Each PATCH is made against the version its client read: each is applied once or answered
    412; those answered 412 merge into the current record and try again until applied. The final
    version counts every applied change, and the history holds each of them exactly once."""
    server = request.getfixturevalue("server" if store == "sqlite" else "postgres_server")
    url = f"{server.url}{API}/{_new_image(server)}"
    _create(server.http, url)
    barrier = threading.Barrier(50)
    first_try = {"applied": 0, "conflict": 0}
    lock = threading.Lock()

    def edit(n: int) -> int:
        http = server.session()
        version = int(http.get(url).headers["ETag"].strip('"'))
        barrier.wait()
        attempt = 0
        while True:
            response = http.patch(f"{url}/viewer-state", json={"pan": {"x": n}}, headers={"If-Match": f'"{version}"'})
            assert response.status_code in (200, 412), response.text
            if attempt == 0:
                with lock:
                    first_try["applied" if response.status_code == 200 else "conflict"] += 1
            if response.status_code == 200:
                assert response.json()["viewerState"]["pan"]["x"] == n
                return response.json()["version"]
            version = response.json()["current"]["version"]  # merge (nothing to merge here) and retry
            assert response.headers["ETag"] == f'"{version}"'
            attempt += 1

    with ThreadPoolExecutor(50) as pool:
        versions = list(pool.map(edit, range(50)))
    assert first_try["applied"] + first_try["conflict"] == 50 and first_try["applied"] >= 1
    assert sorted(versions) == list(range(2, 52))  # every change got a version of its own
    final = server.http.get(url).json()
    assert final["version"] == 51
    history = server.http.get(f"{url}/history", params={"limit": 100}).json()["versions"]
    assert [v["version"] for v in history] == list(range(51, 0, -1))
    applied = {v["version"]: v["viewerState"]["pan"]["x"] for v in history if v["version"] > 1}
    assert sorted(applied.values()) == list(range(50))  # each change exactly once
    assert all(applied[version] == n for n, version in enumerate(versions))


def test_history_and_annotations(server):
    http = server.http
    url = f"{server.url}{API}/{_new_image(server)}"
    _create(http, url, {"annotations": [{"id": "a1", "type": "line"}]})
    big = [{"id": f"a{i}", "type": "polygon", "points": [[i, j] for j in range(40)]} for i in range(200)]
    assert len(json.dumps(big)) > 64 * 1024
    put = http.put(f"{url}/annotations", json={"annotations": big}, headers={"If-Match": '"1"'})
    assert put.status_code == 200, put.text
    doc = put.json()
    assert doc["annotations"] == big and doc["annotationsRef"]["count"] == 200
    assert http.get(url).json()["annotations"] == big  # loaded back from the blob store
    small = http.put(f"{url}/annotations", json={"annotations": []}, headers={"If-Match": '"2"'})
    assert small.json()["annotations"] == [] and "annotationsRef" not in small.json()
    assert http.put(f"{url}/annotations", json={"annotations": []}, headers={"If-Match": '"2"'}).status_code == 412
    assert http.put(f"{url}/annotations", json={"annotations": "x"}, headers={"If-Match": '"3"'}).status_code == 400

    history = http.get(f"{url}/history").json()["versions"]
    assert [v["version"] for v in history] == [3, 2, 1]
    assert history[1]["annotationsRef"]["count"] == 200 and "annotations" not in history[1]
    assert history[2]["annotations"] == [{"id": "a1", "type": "line"}]
    page = http.get(f"{url}/history", params={"limit": 1, "before": 3}).json()["versions"]
    assert [v["version"] for v in page] == [2]
    assert http.get(f"{url}/history", params={"limit": "many"}).status_code == 400


def test_search_and_share_state(server):
    http = server.http
    tag = f"t{generate_uid()[-8:]}"
    keys = [_new_image(server, patient=f"Search^{tag}") for _ in range(3)]
    for key in keys:
        _create(http, f"{server.url}{API}/{key}", {"tags": [tag]})
    found = http.get(f"{server.url}{API}", params={"tag": tag}).json()["records"]
    assert sorted(r["objectKey"] for r in found) == sorted(keys)
    study = keys[0].split("/")[0]
    assert [r["objectKey"] for r in http.get(f"{server.url}{API}", params={"study": study}).json()["records"]] == \
        [keys[0]]
    assert len(http.get(f"{server.url}{API}", params={"tag": tag, "from": "2024-05-06", "to": "20240506"})
               .json()["records"]) == 3
    assert http.get(f"{server.url}{API}", params={"tag": tag, "from": "20240507"}).json()["records"] == []
    assert http.get(f"{server.url}{API}", params={"tag": tag, "shared": "true"}).json()["records"] == []

    share = http.post(f"{server.url}/api/v1/shares", json={"study": study, "targets": [
        {"type": "clinic", "id": "lab-meta"}, {"type": "user", "id": "dr.second-opinion"}]})
    assert share.status_code == 201, share.text
    shared = http.get(f"{server.url}{API}", params={"tag": tag, "shared": "true"}).json()["records"]
    assert [r["objectKey"] for r in shared] == [keys[0]]
    assert sorted(t["id"] for t in shared[0]["share"]["targets"]) == ["dr.second-opinion", "lab-meta"]
    assert shared[0]["share"]["expiresAt"]
    unshared = http.get(f"{server.url}{API}", params={"tag": tag, "shared": "false"}).json()["records"]
    assert sorted(r["objectKey"] for r in unshared) == sorted(keys[1:])

    # the lab reads the shared image's metadata, and may not change it (the record is the owner's)
    lab = server.session(server.token_for(clinic="lab-meta", user="lab1", roles=("lab",)))
    seen = lab.get(f"{server.url}{API}/{keys[0]}").json()
    assert seen["tags"] == [tag]
    assert [t["id"] for t in seen["share"]["targets"]] == ["lab-meta"]  # not who else it is shared with
    assert lab.put(f"{server.url}{API}/{keys[0]}", json={}, headers={"If-Match": '"1"'}).status_code == 404
    assert lab.get(f"{server.url}{API}", params={"tag": tag}).json()["records"] == []  # not its clinic's
    # revoked: the share state shows it at once
    for made in share.json()["shares"]:
        http.delete(f"{server.url}/api/v1/shares/{made['id']}")
    assert http.get(f"{server.url}{API}/{keys[0]}").json()["share"]["targets"] == []
    assert lab.get(f"{server.url}{API}/{keys[0]}").status_code == 404

    for params, word in (({"from": "May"}, "from"), ({"series": "1.2"}, "study"), ({"colour": "x"}, "colour")):
        response = http.get(f"{server.url}{API}", params=params)
        assert response.status_code == 400 and word in response.text, response.text


def test_sidecar(server, image):
    http = server.http
    url = f"{server.url}{API}/{image}"
    if http.get(url).status_code == 404:
        _create(http, url)
    response = http.get(f"{url}/sidecar")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Disposition"] == 'attachment; filename="0001.json"'
    body = response.json()
    assert body["format"] == "dental-pacs-gateway.metadata-sidecar/1"
    assert body["image"].endswith("/0001.dcm") and body["objectKey"] == image
    assert body["version"] == int(response.headers["ETag"].strip('"'))
    assert http.get(f"{url}/sidecar", params={"disposition": "inline"}).headers["Content-Disposition"] == \
        'inline; filename="0001.json"'


def test_another_clinic_gets_404_everywhere_and_is_audited(server):
    http = server.http
    key = _new_image(server)
    url = f"{server.url}{API}/{key}"
    _create(http, url, {"tags": ["private"]})
    other = server.session(server.token_for(clinic="elsewhere", user="intruder", roles=("doctor",)))
    calls = [("GET", url, {}), ("PUT", url, {"json": {}, "headers": {"If-Match": '"1"'}}),
             ("PUT", url, {"json": {}, "headers": {"If-None-Match": "*"}}),
             ("PATCH", f"{url}/viewer-state", {"json": {"zoom": 3}, "headers": {"If-Match": '"1"'}}),
             ("PUT", f"{url}/annotations", {"json": {"annotations": []}, "headers": {"If-Match": '"1"'}}),
             ("GET", f"{url}/history", {}), ("GET", f"{url}/sidecar", {})]
    for method, target, kw in calls:
        response = other.request(method, target, **kw)
        assert response.status_code == 404, (method, target, response.text)
        assert "elsewhere" not in response.text and "default" not in response.text
    assert other.get(f"{server.url}{API}", params={"tag": "private"}).json()["records"] == []
    assert http.get(url).json()["version"] == 1  # nothing changed
    study = key.split("/")[0]
    records = http.get(f"{server.url}/api/v1/audit", params={"resource": f"study:{study}", "outcome": "denied",
                                                              "limit": 100}).json()["records"]
    mine = [r for r in records if r["user_id"] == "intruder"]
    assert len(mine) == len(calls), mine
    assert all(r["resource_clinic"] == "default" and "held by clinic default" in r["detail"] for r in mine)
    changes = http.get(f"{server.url}/api/v1/audit", params={"resource": f"study:{study}", "action": "metadata",
                                                              "outcome": "ok"}).json()["records"]
    assert [r["detail"] for r in changes] == ["put: version 1"]


def test_roles(server, image):
    url = f"{server.url}{API}/{image}"
    support = server.session(server.token_for(roles=("support",)))
    assert support.get(url).status_code == 403
    assert support.patch(f"{url}/viewer-state", json={"zoom": 2}, headers={"If-Match": '"1"'}).status_code == 403
    staff = server.session(server.token_for(user="nurse", roles=("staff",)))
    current = staff.get(url)
    assert current.status_code == 200
    patched = staff.patch(f"{url}/viewer-state", json={"flip": {"horizontal": True}},
                          headers={"If-Match": current.headers["ETag"]})
    assert patched.status_code == 200 and patched.json()["updatedBy"] == "nurse"


def test_metadata_goes_with_its_study(server):
    http = server.http
    key = _new_image(server)
    _create(http, f"{server.url}{API}/{key}", {"tags": ["doomed"]})
    study = key.split("/")[0]
    assert http.delete(f"{server.url}/dicom-web/studies/{study}").status_code == 204
    assert http.get(f"{server.url}{API}", params={"study": study}).json()["records"] == []
    assert http.get(f"{server.url}{API}/{key}").status_code == 404


def test_metadata_goes_with_its_instance_and_its_series(server):
    """An instance delete takes exactly that instance's records (every variant, history and
    offloaded annotations); a series delete those of the series; the rest stays."""
    http = server.http
    study, kept_series, series = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    files = [dicom_instance(study, series, sops[0]), dicom_instance(study, series, sops[1]),
             dicom_instance(study, kept_series, sops[2])]
    assert stow(server.url, files, headers=server.auth_headers).status_code == 200
    keys = [f"{study}/{series}/{sops[0]}/original", f"{study}/{series}/{sops[0]}/preview",
            f"{study}/{series}/{sops[1]}/original", f"{study}/{kept_series}/{sops[2]}/original"]
    big = [{"id": f"a{i}", "points": [[i, j] for j in range(40)]} for i in range(200)]  # offloaded to a blob
    for key in keys:
        _create(http, f"{server.url}{API}/{key}", {"tags": ["partial"], "annotations": big})
    blobs = server.data_dir / "blobs" / "metadata" / "default" / study
    assert len(list(blobs.rglob("*.json"))) == 4

    deleted = http.delete(f"{server.url}/dicom-web/studies/{study}/series/{series}/instances/{sops[0]}")
    assert deleted.status_code == 204, deleted.text
    for key in keys[:2]:
        assert http.get(f"{server.url}{API}/{key}").status_code == 404
        assert http.get(f"{server.url}{API}/{key}/history").status_code == 404
    assert not [p for p in (blobs / series / sops[0]).rglob("*") if p.is_file()]
    left = [r["objectKey"] for r in http.get(f"{server.url}{API}", params={"study": study}).json()["records"]]
    assert sorted(left) == sorted(keys[2:])
    assert http.get(f"{server.url}{API}/{keys[2]}").json()["annotations"] == big

    assert http.delete(f"{server.url}/dicom-web/studies/{study}/series/{series}").status_code == 204
    assert http.get(f"{server.url}{API}/{keys[2]}").status_code == 404
    assert [r["objectKey"] for r in http.get(f"{server.url}{API}", params={"study": study}).json()["records"]] == \
        [keys[3]]
    assert [p.relative_to(blobs).parts[:2] for p in blobs.rglob("*.json")] == [(kept_series, sops[2])]
    assert http.get(f"{server.url}{API}/{keys[3]}").json()["annotations"] == big


def _stored_share(server, key: str):
    """The share state as the SQL store keeps it (the mirror, not computed at read time)."""
    import sqlite3

    study, series, sop, variant = key.split("/")
    with sqlite3.connect(f"file:{server.data_dir / 'index.sqlite3'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT share, shared_until, version FROM metadata_records WHERE study_uid = ? AND "
                         "series_uid = ? AND sop_uid = ? AND variant = ?", (study, series, sop, variant)).fetchone()
    return (json.loads(row[0]) if row[0] else None), row[1], row[2]


def test_share_state_is_mirrored_into_the_records(server):
    """A share made or revoked is written into the records of its study (series) without a
    version; client writes keep it; a record made later gets it; an expired one is not shown."""
    import time

    http = server.http
    study, series, other_series = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    files = [dicom_instance(study, series, sops[0]), dicom_instance(study, series, sops[1]),
             dicom_instance(study, other_series, sops[2])]
    assert stow(server.url, files, headers=server.auth_headers).status_code == 200
    first, later, other = (f"{study}/{series}/{sops[0]}/original", f"{study}/{series}/{sops[1]}/original",
                           f"{study}/{other_series}/{sops[2]}/original")
    for key in (first, other):
        _create(http, f"{server.url}{API}/{key}", {"tags": ["mirror"]})

    made = http.post(f"{server.url}/api/v1/shares", json={"study": study, "series": series, "targets": [
        {"type": "clinic", "id": "lab-mirror"}]})
    assert made.status_code == 201, made.text
    share_id = made.json()["shares"][0]["id"]
    stored, until, version = _stored_share(server, first)
    assert [t["share"] for t in stored["targets"]] == [share_id] and until and version == 1
    assert _stored_share(server, other)[0] is None  # a series share: the other series is not shared
    got = http.get(f"{server.url}{API}/{first}")
    assert got.headers["ETag"] == '"1"'  # no version of its own
    assert got.json()["share"]["targets"] == [{"shareId": share_id, "type": "clinic", "id": "lab-mirror",
                                               "permissions": ["view"],
                                               "expiresAt": made.json()["shares"][0]["expires_at"]}]
    assert [v["version"] for v in http.get(f"{server.url}{API}/{first}/history").json()["versions"]] == [1]
    # a client's write keeps the mirrored share
    put = http.put(f"{server.url}{API}/{first}", json={"tags": ["mirror", "edited"]}, headers={"If-Match": '"1"'})
    assert put.status_code == 200 and put.json()["share"]["targets"][0]["shareId"] == share_id
    assert _stored_share(server, first)[0] == stored
    # a record made after the share has it at once
    created = _create(http, f"{server.url}{API}/{later}", {"tags": ["mirror"]}).json()
    assert [t["shareId"] for t in created["share"]["targets"]] == [share_id]
    assert _stored_share(server, later)[0] == stored
    found = http.get(f"{server.url}{API}", params={"study": study, "shared": "true"}).json()["records"]
    assert sorted(r["objectKey"] for r in found) == sorted([first, later])
    assert [r["objectKey"] for r in http.get(f"{server.url}{API}", params={"study": study, "shared": "false"})
            .json()["records"]] == [other]

    # revoked: mirrored at once, still no version
    assert http.delete(f"{server.url}/api/v1/shares/{share_id}").status_code == 204
    assert _stored_share(server, first) == (None, None, 2)
    assert http.get(f"{server.url}{API}/{first}").json()["share"] == {"targets": [], "expiresAt": None}
    assert http.get(f"{server.url}{API}", params={"study": study, "shared": "true"}).json()["records"] == []

    # expired: not shown nor found as shared, though the mirror still holds it
    short = http.post(f"{server.url}/api/v1/shares", json={"study": study, "ttl": 2, "targets": [
        {"type": "user", "id": "dr.brief"}]})
    assert short.status_code == 201, short.text
    assert len(http.get(f"{server.url}{API}", params={"study": study, "shared": "true"}).json()["records"]) == 3
    time.sleep(2.2)
    assert _stored_share(server, other)[0] is not None
    assert http.get(f"{server.url}{API}/{other}").json()["share"] == {"targets": [], "expiresAt": None}
    assert http.get(f"{server.url}{API}", params={"study": study, "shared": "true"}).json()["records"] == []
    assert len(http.get(f"{server.url}{API}", params={"study": study, "shared": "false"}).json()["records"]) == 3


def test_sync_share_state_mirrors_again(server):
    """``gateway sync-share-state`` puts right a record whose mirror was lost (here: wiped)."""
    import sqlite3
    import subprocess
    import sys

    http = server.http
    key = _new_image(server)
    _create(http, f"{server.url}{API}/{key}")
    study = key.split("/")[0]
    made = http.post(f"{server.url}/api/v1/shares", json={"study": study, "targets": [{"type": "link"}]})
    assert made.status_code == 201
    with sqlite3.connect(server.data_dir / "index.sqlite3") as db:
        db.execute("UPDATE metadata_records SET share = NULL, shared_until = NULL, share_stamp = 0 "
                   "WHERE study_uid = ?", (study,))
    assert http.get(f"{server.url}{API}/{key}").json()["share"]["targets"] == []
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "sync-share-state", "--clinic", "default"],
                         env=server.env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "clinic default: share state of" in run.stdout
    assert [t["shareId"] for t in http.get(f"{server.url}{API}/{key}").json()["share"]["targets"]] == \
        [made.json()["shares"][0]["id"]]
