"""Scale-out: two ``gateway serve`` processes (two gunicorn workers each) on one PostgreSQL
index and one S3 bucket, as behind a load balancer; and moving an embedded deployment onto
those shared stores with ``gateway migrate-backends``.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.uid import generate_uid

from storage.index.postgres import PostgresIndexStore
from tests.conftest import ServerProcess
from tests.services import (dicom_instance, env_of, pg_connect, retrieve_parts, shared_store_env, stow)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.s3]

MiB = 1024 * 1024
NUMBER_OF_INSTANCES = "00201208"


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def qido(server, path: str, **params) -> list[dict]:
    response = server.http.get(f"{server.dicomweb}/{path}", params=params, timeout=30)
    assert response.status_code in (200, 204), (response.status_code, response.text[:300])
    return response.json() if response.status_code == 200 and response.content else []


def objects(stores, prefix: str) -> dict[str, bytes]:
    client = stores.moto.client()
    listed = client.list_objects_v2(Bucket=stores.bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=stores.bucket, Key=o["Key"])["Body"].read() for o in listed}


@pytest.fixture(scope="module")
def stores(postgres_database, moto_server):
    """One schema of the session's PostgreSQL database and one bucket, shared by the module."""
    return SimpleNamespace(dsn=postgres_database.new_schema(), bucket=moto_server.create_bucket(), moto=moto_server)


@pytest.fixture(scope="module")
def pair(stores, tmp_path_factory):
    """Two gateway processes on the shared stores, started at the same moment (their
    migrations race, under PostgreSQL's advisory lock)."""
    # One local issuer for both (as for several machines: the same auth.key_dir), so a token
    # works on either.
    env = shared_store_env(stores.dsn, stores.moto, stores.bucket, **{
        "storage.s3_multipart_threshold": 5 * MiB, "storage.s3_multipart_chunksize": 5 * MiB,
        "storage.postgres_pool_max": 4, "auth.key_dir": str(tmp_path_factory.mktemp("auth-keys"))})
    servers = [ServerProcess(tmp_path_factory.mktemp(name) / "data", env=env) for name in ("gw-a", "gw-b")]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.start(timeout=90), servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_both_processes_migrated_the_schema_once(pair, stores):
    names = sorted(p.name for p in resources.files("storage.index.migrations").joinpath("postgresql").iterdir()
                   if p.name.endswith(".sql"))
    with pg_connect(stores.dsn) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")] == names


def test_stored_through_one_is_found_and_retrieved_through_the_other(pair, stores):
    a, b = pair
    study, series = generate_uid(), generate_uid()
    files = [dicom_instance(study, series, size=32),
             dicom_instance(study, series, size=64, frames=3, seed=1),
             dicom_instance(study, generate_uid(), size=1800, seed=2)]  # 6.5 MB: a multipart upload
    response = stow(a.url, files, headers=a.auth_headers)
    assert response.status_code == 200, response.text

    [found] = qido(b, "studies", StudyInstanceUID=study)
    assert found[NUMBER_OF_INSTANCES]["Value"] == [3]
    assert len(qido(b, f"studies/{study}/instances")) == 3
    for data in files:
        s, se, sop = uids(data)
        assert retrieve_parts(f"{b.dicomweb}/studies/{s}/series/{se}/instances/{sop}", headers=b.auth_headers) == [data]
    assert sorted(retrieve_parts(f"{b.dicomweb}/studies/{study}", headers=b.auth_headers)) == sorted(files)
    # A frame of the multi-frame instance, read from S3 by range.
    multi = pydicom.dcmread(io.BytesIO(files[1]))
    s, se, sop = uids(files[1])
    [frame] = retrieve_parts(f"{b.dicomweb}/studies/{s}/series/{se}/instances/{sop}/frames/2", headers=b.auth_headers,
                             accept='multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert frame == multi.PixelData[64 * 64 * 2:2 * 64 * 64 * 2]
    metadata = b.http.get(f"{b.dicomweb}/studies/{study}/metadata", timeout=30).json()
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(uids(f)[2] for f in files)
    # In the bucket: the received bytes unchanged, one object per instance.
    stored = objects(stores, f"dicom/default/{study}/")
    assert sorted(stored.values()) == sorted(files)


def test_the_same_instances_stored_concurrently_through_both_are_stored_once(pair, stores):
    a, b = pair
    study, series = generate_uid(), generate_uid()
    files = [dicom_instance(study, series, seed=10 + i) for i in range(4)]
    requests_in_flight = 6
    barrier = threading.Barrier(requests_in_flight)

    def send(i: int):
        barrier.wait()
        return stow(pair[i % 2].url, files, headers=pair[i % 2].auth_headers).status_code

    with ThreadPoolExecutor(requests_in_flight) as pool:
        statuses = list(pool.map(send, range(requests_in_flight)))
    assert statuses == [200] * requests_in_flight  # stored by one request, duplicates of it for the others

    for server in (a, b):
        [found] = qido(server, "studies", StudyInstanceUID=study)
        assert found[NUMBER_OF_INSTANCES]["Value"] == [4]
        assert sorted(i["00080018"]["Value"][0] for i in qido(server, f"studies/{study}/instances")) == \
            sorted(uids(f)[2] for f in files)
    with pg_connect(stores.dsn) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT i.sop_uid) FROM instances i "
                            "JOIN studies s ON s.id = i.study_pk WHERE s.study_uid = %s", (study,)).fetchone()
    assert rows == (4, 4)
    assert sorted(objects(stores, f"dicom/default/{study}/").values()) == sorted(files)


def test_an_archive_started_through_one_resumes_through_the_other(pair, stores):
    """The same bytes and ETag from either process, on PostgreSQL + S3: ranges that start inside
    an entry read its S3 object from the offset; CRC-32s missing from older rows are computed
    once and kept in the shared index."""
    a, b = pair
    study, series = generate_uid(), generate_uid()
    files = [dicom_instance(study, series, size=600, seed=30 + i) for i in range(3)]  # 720 KB each
    assert stow(a.url, files, headers=a.auth_headers).status_code == 200
    url = f"/api/v1/studies/{study}/archive"
    whole = b.http.get(b.url + url, timeout=60)
    assert whole.status_code == 200 and int(whole.headers["Content-Length"]) == len(whole.content)
    etag, length = whole.headers["ETag"], len(whole.content)
    archive = zipfile.ZipFile(io.BytesIO(whole.content))
    assert sorted(archive.read(n) for n in archive.namelist()) == sorted(files)
    cut = length // 2  # inside the second entry's data
    rest = a.http.get(a.url + url, headers={"Range": f"bytes={cut}-", "If-Range": etag}, timeout=60)
    assert rest.status_code == 206 and rest.headers["ETag"] == etag
    assert whole.content[:cut] + rest.content == whole.content
    with pg_connect(stores.dsn) as conn:  # as rows indexed by an older version
        conn.execute("UPDATE instances i SET crc32 = NULL FROM studies s WHERE s.id = i.study_pk "
                     "AND s.study_uid = %s", (study,))
    legacy = a.http.get(a.url + url, headers={"Range": "bytes=-5000"}, timeout=60)
    assert legacy.status_code == 206 and legacy.content == whole.content[-5000:]
    with pg_connect(stores.dsn) as conn:
        kept = conn.execute("SELECT count(*) FROM instances i JOIN studies s ON s.id = i.study_pk "
                            "WHERE s.study_uid = %s AND i.crc32 IS NOT NULL", (study,)).fetchone()[0]
    assert kept == 3
    assert b.http.get(b.url + url, timeout=60).content == whole.content


def test_deleted_through_one_is_gone_through_the_other(pair, stores):
    a, b = pair
    study, series = generate_uid(), generate_uid()
    files = [dicom_instance(study, series, seed=20 + i) for i in range(2)]
    assert stow(b.url, files, headers=b.auth_headers).status_code == 200
    assert len(qido(a, f"studies/{study}/instances")) == 2

    assert a.http.delete(f"{a.dicomweb}/studies/{study}", timeout=30).status_code == 204
    assert qido(b, "studies", StudyInstanceUID=study) == []
    s, se, sop = uids(files[0])
    response = b.http.get(f"{b.dicomweb}/studies/{s}/series/{se}/instances/{sop}",
                          headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                          timeout=30)
    assert response.status_code == 404
    assert objects(stores, f"dicom/default/{study}/") == {}


# --- moving an embedded deployment onto the shared stores ------------------------------------

def _embedded_deployment(data_dir, files_by_clinic: dict[str, list[bytes]]) -> None:
    """An embedded gateway's data folder (SQLite + blob folder) holding these instances."""
    from auth.base import Principal
    from gateway.config import load_settings
    from gateway.services import Services

    settings = load_settings(overrides={"storage.data_dir": str(data_dir), "storage.fsync": False}, environ={})
    services = Services.build(settings, plugins=False)
    try:
        for clinic, files in files_by_clinic.items():
            for data in files:
                outcome = services.ingest.commit(services.ingest.stage(io.BytesIO(data)),
                                                 principal=Principal.system(clinic, "test"))
                assert outcome.status == "stored", outcome.error
    finally:
        services.close()


def _migrate(source_dir, stores, *extra: str) -> subprocess.CompletedProcess:
    env = {**shared_store_env(stores.dsn, stores.moto, stores.bucket), **env_of({"log.level": "warning"})}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "migrate-backends", "--source-data-dir",
                           str(source_dir), "--quiet", *extra], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_migrate_an_embedded_deployment(pair, stores, tmp_path):
    a, b = pair
    study, other_study = generate_uid(), generate_uid()
    files = [dicom_instance(study, None, seed=30 + i, size=48, frames=1 + i) for i in range(3)]
    clinic2 = [dicom_instance(other_study, None, seed=40, patient="Other^Clinic")]
    source = tmp_path / "embedded"
    _embedded_deployment(source, {"default": files, "clinic2": clinic2})
    preview = source / "blobs" / "previews" / "default" / "p1.jpg"
    preview.parent.mkdir(parents=True)
    preview.write_bytes(b"\xff\xd8 a derived object")

    first = _migrate(source, stores)
    assert first.returncode == 0, first.stderr
    assert "4 instances copied" in first.stdout and "0 failed" in first.stdout
    assert "sha256 verified for 4" in first.stdout and "derived objects: 1 copied" in first.stdout

    # Served by the scaled-out gateways, byte for byte.
    for data in files:
        s, se, sop = uids(data)
        assert retrieve_parts(f"{b.dicomweb}/studies/{s}/series/{se}/instances/{sop}", headers=b.auth_headers) == [data]
    [found] = qido(a, "studies", StudyInstanceUID=study)
    assert found[NUMBER_OF_INSTANCES]["Value"] == [3]
    database = PostgresIndexStore(stores.dsn)
    index = database.instances
    try:
        copy = index.find_instance("clinic2", uids(clinic2[0])[2])
        assert copy.sha256 == hashlib.sha256(clinic2[0]).hexdigest()
        assert index.find_instance("default", uids(clinic2[0])[2]) is None  # still the other clinic's
    finally:
        database.close()
    assert objects(stores, "previews/")["previews/default/p1.jpg"] == b"\xff\xd8 a derived object"

    again = _migrate(source, stores)
    assert again.returncode == 0, again.stderr
    assert "0 instances copied" in again.stdout and "4 already there" in again.stdout
    assert "derived objects: 0 copied, 1 already there" in again.stdout

    # A source file whose bytes no longer match its index entry is reported, never copied.
    [blob] = [p for p in (source / "blobs" / "dicom" / "clinic2").rglob("*.dcm")]
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    damaged = _migrate(source, stores, "--clinic", "clinic2")
    assert damaged.returncode == 1
    assert "differs from the indexed" in damaged.stderr and "1 failed" in damaged.stdout


def test_upload_events_are_seen_from_the_other_process(pair, stores):
    """An upload received by one process is followed (Server-Sent Events) and listed through the
    other: its state lives in the shared index database."""
    import json as json_module
    import zipfile

    import requests

    a, b = pair
    study = generate_uid()
    files = [dicom_instance(study, size=16, seed=i) for i in range(12)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, data in enumerate(files):
            archive.writestr(f"slices/{i:03d}.dcm", data)
    opened = a.http.post(f"{a.url}/api/v1/uploads", json={"expected_instances": 12}, timeout=30)
    assert opened.status_code == 201, opened.text
    upload_id = opened.json()["id"]
    seen: list[tuple[str, dict]] = []

    def follow():
        with requests.get(f"{b.url}/api/v1/uploads/{upload_id}/events", headers=b.auth_headers, stream=True,
                          timeout=120) as response:
            assert response.status_code == 200
            event = None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    seen.append((event, json_module.loads(line[6:])))
                    if event == "complete":
                        return

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    put = a.http.put(f"{a.url}/api/v1/uploads/{upload_id}/archive", data=buf.getvalue(), timeout=120,
                     headers={"Content-Type": "application/zip"})
    assert put.status_code == 200, put.text[:300]
    assert b.http.get(f"{b.url}/api/v1/uploads/{upload_id}", timeout=30).json()["counts"]["stored"] == 12
    assert b.http.post(f"{b.url}/api/v1/uploads/{upload_id}/complete", timeout=30).status_code == 200
    watcher.join(60)
    assert not watcher.is_alive()
    assert [d["name"] for e, d in seen if e == "entry"] == [f"slices/{i:03d}.dcm" for i in range(12)]
    assert seen[-1][0] == "complete" and seen[-1][1]["instances"] == 12
    assert len(qido(b, "instances", StudyInstanceUID=study)) == 12
