"""A gateway on PostgreSQL + S3 whose stores go away during a run and come back: the affected
requests answer 503 with Retry-After (STOW: FailureReason 0xA700), nothing is half-stored,
and the same gateway process serves again once the store is back, without a restart.
"""
from __future__ import annotations

import time

import pytest
import requests
from pydicom.uid import generate_uid

from tests.conftest import ServerProcess
from tests.services import (MotoServer, ThrowawayPostgres, dicom_instance, missing_service, retrieve_parts,
                            shared_store_env, stow)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.s3]

FAILED_SEQ, FAILURE_REASON, SOP_INSTANCE = "00081198", "00081197", "00081155"
OUT_OF_RESOURCES = 0xA700


def studies(server, study: str) -> requests.Response:
    return server.http.get(f"{server.dicomweb}/studies", params={"StudyInstanceUID": study}, timeout=30)


def found(server, study: str) -> bool:
    response = studies(server, study)
    assert response.status_code in (200, 204), (response.status_code, response.text[:300])
    return response.status_code == 200 and bool(response.content) and len(response.json()) == 1


def assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert int(response.headers["Retry-After"]) > 0


def wait_until(check, timeout: float = 60) -> None:
    """Poll (bounded) until ``check()`` is true; the gateway reconnects by itself meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, AssertionError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"not back within {timeout} s")


def test_s3_down_then_back(postgres_dsn, tmp_path):
    moto = MotoServer(log_dir=tmp_path).start()  # an S3 of this test's own, to stop
    bucket = moto.create_bucket()
    env = shared_store_env(postgres_dsn, moto, bucket, **{
        "storage.s3_max_attempts": 2, "storage.s3_connect_timeout": 1, "storage.s3_read_timeout": 5})
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        before, during = generate_uid(), generate_uid()
        assert stow(server.url, [dicom_instance(before, seed=1)], headers=server.auth_headers).status_code == 200

        moto.stop()
        data = dicom_instance(during, seed=2)
        response = stow(server.url, [data], headers=server.auth_headers)
        assert_unavailable(response)
        [failure] = response.json()[FAILED_SEQ]["Value"]
        assert failure[FAILURE_REASON]["Value"] == [OUT_OF_RESOURCES]
        assert not found(server, during)  # nothing indexed: the index is fine, the blob never made it
        assert found(server, before)  # queries need no blob
        assert_unavailable(requests.get(server.url + "/readyz", timeout=30))

        moto.start()  # same port; moto keeps nothing, so the bucket is made again
        moto.create_bucket(bucket)
        wait_until(lambda: all(requests.get(server.url + "/readyz", timeout=10).status_code == 200
                               for _ in range(4)))
        assert stow(server.url, [data], headers=server.auth_headers).status_code == 200
        [instance] = server.http.get(f"{server.dicomweb}/studies/{during}/instances", timeout=30).json()
        series, sop = instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0]
        assert retrieve_parts(f"{server.dicomweb}/studies/{during}/series/{series}/instances/{sop}",
                              headers=server.auth_headers) == [data]
        assert server.proc.poll() is None  # the same process throughout
    finally:
        server.stop()
        moto.stop()


# Every endpoint family that needs the index: DICOMweb and the fast API, its administration included.
def _index_endpoints(study: str, series: str, sop: str) -> list[tuple[str, str, dict]]:
    instance = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    return [
        ("GET", "/dicom-web/studies", {"params": {"PatientID": "x"}}),
        ("GET", "/dicom-web/series", {}),
        ("GET", "/dicom-web/instances", {}),
        ("GET", f"/dicom-web/studies/{study}/series", {}),
        ("GET", f"/dicom-web/studies/{study}/metadata", {}),
        ("GET", instance, {"headers": {"Accept": "multipart/related; type=\"application/dicom\"; transfer-syntax=*"}}),
        ("GET", instance + "/frames/1", {"headers": {"Accept": "multipart/related; type=\"application/octet-stream\""}}),
        ("GET", instance + "/rendered", {"headers": {"Accept": "image/jpeg"}}),
        ("GET", f"/dicom-web/studies/{study}/thumbnail", {"headers": {"Accept": "image/jpeg"}}),
        ("DELETE", instance, {}),
        ("GET", "/api/v1/shares", {}),
        ("POST", "/api/v1/shares", {"json": {"study": study, "targets": [{"type": "clinic", "id": "other"}]}}),
        ("GET", "/api/v1/shares/nope", {}),
        ("DELETE", "/api/v1/shares/nope", {}),
        ("POST", "/api/v1/signed-urls", {"json": {"study": study, "series": series, "instance": sop}}),
        ("GET", "/api/v1/audit", {}),
        ("GET", "/api/v1/admin/forwards", {}),
        ("POST", "/api/v1/admin/forwards/retry", {}),
        ("POST", "/api/v1/admin/forwards/1/retry", {}),
        ("GET", "/api/v1/admin/jobs", {}),
        ("POST", "/api/v1/admin/jobs/retry", {}),
    ]


def test_postgres_down_then_back(moto_server, s3_bucket, tmp_path):
    try:
        pg = ThrowawayPostgres().start()  # a PostgreSQL of this test's own, to stop
    except (OSError, RuntimeError) as exc:
        missing_service(f"cannot run a throwaway PostgreSQL cluster: {exc}")
    env = shared_store_env(pg.dsn, moto_server, s3_bucket, **{
        "storage.postgres_pool_timeout": 3, "storage.postgres_connect_timeout": 1})
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        before, during = generate_uid(), generate_uid()
        assert stow(server.url, [dicom_instance(before, seed=3)], headers=server.auth_headers).status_code == 200

        [instance] = server.http.get(f"{server.dicomweb}/studies/{before}/instances", timeout=30).json()
        series, sop = instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0]

        pg.stop()
        assert_unavailable(studies(server, before))
        body = studies(server, before).json()
        assert body["code"] == 503 and "PostgreSQL" in body["message"]
        for method, path, kwargs in _index_endpoints(before, series, sop):
            response = server.http.request(method, server.url + path, timeout=30, **kwargs)
            assert response.status_code == 503, (method, path, response.status_code, response.text[:300])
            assert int(response.headers["Retry-After"]) > 0 and response.json()["code"] == 503, (method, path)
        data = dicom_instance(during, seed=4)
        response = stow(server.url, [data], headers=server.auth_headers)
        assert_unavailable(response)
        [failure] = response.json()[FAILED_SEQ]["Value"]
        assert failure[FAILURE_REASON]["Value"] == [OUT_OF_RESOURCES]
        assert_unavailable(requests.get(server.url + "/readyz", timeout=30))
        listed = moto_server.client().list_objects_v2(Bucket=s3_bucket, Prefix=f"dicom/default/{during}/")
        assert listed.get("KeyCount", 0) == 0  # no orphan blob either

        pg.start()
        # Both gunicorn workers have pools of their own: several answers in a row.
        wait_until(lambda: all(studies(server, before).status_code == 200 for _ in range(4)))
        assert found(server, before)  # what was stored before the outage is still there
        assert not found(server, during)
        assert stow(server.url, [data], headers=server.auth_headers).status_code == 200
        assert found(server, during)
        assert requests.get(server.url + "/readyz", timeout=30).status_code == 200
        assert server.proc.poll() is None  # the same process throughout
    finally:
        server.stop()
        pg.destroy()
