"""Forwarding on the job queue: the instance_stored plugin, the handler's retries through the
job worker, the admin endpoints. (The queue itself has its contract: tests/contract/jobs.py.)"""
from __future__ import annotations

import pytest

from auth.base import EMBEDDED_PRINCIPAL
from gateway.config import load_settings
from gateway.services.jobs import now_ms
from gateway.worker import JobWorker, pid_alive
from tests.data import sample_file as sample_file
from tests.helpers import free_port


# --- the plugin, the worker and the admin endpoint on a real app ------------------------------

def _app(tmp_path, rules, **overrides):
    from gateway.app import create_app

    settings = load_settings(overrides={
        "storage.data_dir": str(tmp_path / "data"), "storage.fsync": False, "log.level": "warning",
        "dimse.destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()},
                               {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port()}],
        "forward.rules": rules, "forward.retry_initial": 10.0, "forward.max_attempts": 2,
        "previews.enabled": False,  # the queue holds forwards only
        **overrides,
    }, environ={})
    return create_app(settings)


@pytest.fixture
def app_with_rules(tmp_path):
    app = _app(tmp_path, [{"name": "all", "to": ["PACS"]}, {"name": "mr-only", "to": ["ARCHIVE"], "modalities": ["MR"]},
                          {"name": "both", "to": ["PACS", "ARCHIVE"], "clinic": "other"}])
    yield app
    app.extensions["gateway"].close()


def _ingest(app, name: str):
    services = app.extensions["gateway"]
    with open(sample_file(name), "rb") as fh:
        outcome = services.ingest.commit(services.ingest.stage(fh), principal=EMBEDDED_PRINCIPAL)
    assert outcome.ok, outcome.error
    return outcome


def _forwards(services) -> list:
    return services.jobs.list_jobs(kind="forward")


def _worker(services) -> JobWorker:
    return JobWorker.for_services(services, kinds=["forward"])


def test_stored_instances_are_queued_per_matching_rule(app_with_rules):
    services = app_with_rules.extensions["gateway"]
    ct = _ingest(app_with_rules, "CT_small.dcm")
    mr = _ingest(app_with_rules, "MR_small.dcm")
    queued = {(j.payload["sop_uid"], j.payload["destination"], j.payload["rule"]) for j in _forwards(services)}
    assert queued == {(ct.sop_instance_uid, "PACS", "all"), (mr.sop_instance_uid, "PACS", "all"),
                      (mr.sop_instance_uid, "ARCHIVE", "mr-only")}
    assert {j.clinic_id for j in _forwards(services)} == {"default"}
    _ingest(app_with_rules, "CT_small.dcm")  # a duplicate is not stored again, so not queued again
    assert len(_forwards(services)) == 3


def test_worker_backs_off_then_gives_up(app_with_rules):
    services = app_with_rules.extensions["gateway"]
    ct = _ingest(app_with_rules, "CT_small.dcm")
    worker = _worker(services)
    assert worker.kinds == ["forward"]
    assert worker.run_once() == 1  # nothing listens on PACS' port
    (item,) = _forwards(services)
    assert item.status == "pending" and item.attempts == 1 and "could not be reached" in item.last_error
    assert item.lease_owner is None
    assert 9_000 < item.next_attempt_at - now_ms() <= 10_000  # forward.retry_initial
    assert worker.run_once() == 0  # not due
    assert services.jobs.retry(kind="forward") == 0  # (no effect: it is pending, not failed)
    with services.database.transaction() as cur:  # make it due now
        cur.execute("UPDATE jobs SET next_attempt_at = 0")
    assert worker.run_once() == 1
    (item,) = _forwards(services)
    assert item.status == "failed" and item.attempts == 2  # forward.max_attempts
    assert item.payload["sop_uid"] == ct.sop_instance_uid


def test_worker_drops_forwards_of_deleted_instances(app_with_rules):
    services = app_with_rules.extensions["gateway"]
    ct = _ingest(app_with_rules, "CT_small.dcm")
    services.deleter.delete(EMBEDDED_PRINCIPAL, ct.study_uid)
    assert _worker(services).run_once() == 1
    assert _forwards(services) == []


def test_admin_lists_and_retries(app_with_rules):
    from tests.conftest import AuthActions

    client = app_with_rules.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = AuthActions(app_with_rules).headers()["Authorization"]
    services = app_with_rules.extensions["gateway"]
    _ingest(app_with_rules, "CT_small.dcm")
    body = client.get("/api/v1/admin/forwards").get_json()
    assert body["counts"] == {"pending": 1, "failed": 0}
    (item,) = body["items"]
    assert item["destination"] == "PACS" and item["status"] == "pending" and "lease_owner" not in item
    assert client.post(f"/api/v1/admin/forwards/{item['id']}/retry").status_code == 404  # not failed
    owner = "test:1:1"
    queue = services.jobs.queue
    (claimed,) = queue.claim(owner, kinds=["forward"], now_ms=now_ms(), lease_ms=1000, limit=1)
    assert client.get("/api/v1/admin/forwards").get_json()["items"][0]["status"] == "pending"  # being sent
    queue.fail(claimed, owner, error="0xA900", next_attempt_ms=0, give_up=True, now_ms=now_ms())
    assert client.get("/api/v1/admin/forwards?status=failed").get_json()["counts"]["failed"] == 1
    response = client.post("/api/v1/admin/forwards/retry", json={"ids": [item["id"]]})
    assert response.status_code == 200 and response.get_json() == {"retried": 1}
    assert client.post("/api/v1/admin/forwards/retry").get_json() == {"retried": 0}


def test_admin_job_queue_of_every_kind(app_with_rules):
    from tests.conftest import AuthActions

    auth = AuthActions(app_with_rules)
    client = app_with_rules.test_client()
    services = app_with_rules.extensions["gateway"]
    ct = _ingest(app_with_rules, "CT_small.dcm")
    body = client.get("/api/v1/admin/jobs", headers=auth.headers()).get_json()
    assert body["counts"] == {"pending": 1, "running": 0, "failed": 0}
    (item,) = body["items"]
    assert (item["kind"], item["clinic_id"], item["status"]) == ("forward", "default", "pending")
    assert item["payload"]["sop_uid"] == ct.sop_instance_uid and "lease_owner" not in item
    queue = services.jobs.queue
    (claimed,) = queue.claim("test:1:1", kinds=["forward"], now_ms=now_ms(), lease_ms=60_000, limit=1)
    running = client.get("/api/v1/admin/jobs?kind=forward", headers=auth.headers()).get_json()
    assert running["counts"]["running"] == 1 and running["items"][0]["status"] == "running"
    queue.fail(claimed, "test:1:1", error="down", next_attempt_ms=0, give_up=True, now_ms=now_ms())
    assert client.get("/api/v1/admin/jobs?status=failed", headers=auth.headers()).get_json()["items"][0][
        "last_error"] == "down"
    # another clinic's admin sees none of it, and may not pick this clinic
    other = auth.headers(clinic="other")
    assert client.get("/api/v1/admin/jobs", headers=other).get_json()["items"] == []
    assert client.get("/api/v1/admin/jobs?clinic=default", headers=other).status_code == 404
    assert client.post("/api/v1/admin/jobs/retry", headers=other).get_json() == {"retried": 0}
    assert client.post("/api/v1/admin/jobs/retry", headers=auth.headers()).get_json() == {"retried": 1}
    assert client.get("/api/v1/admin/jobs", headers=auth.headers(roles=["doctor"])).status_code == 403
    assert client.get("/api/v1/admin/jobs?status=done", headers=auth.headers()).status_code == 400


@pytest.mark.parametrize("method, url, kwargs, status", [
    ("get", "/api/v1/admin/forwards?status=sent", {}, 400),
    ("get", "/api/v1/admin/forwards?limit=5000", {}, 400),
    ("get", "/api/v1/admin/forwards?offset=x", {}, 400),
    ("post", "/api/v1/admin/forwards/retry", {"json": {"ids": ["1"]}}, 400),
    ("post", "/api/v1/admin/forwards/retry", {"json": [1]}, 400),
    ("post", "/api/v1/admin/forwards/12345/retry", {}, 404),
])
def test_admin_errors_are_json(app_with_rules, method, url, kwargs, status):
    from tests.conftest import AuthActions

    kwargs = {**kwargs, "headers": AuthActions(app_with_rules).headers()}
    response = getattr(app_with_rules.test_client(), method)(url, **kwargs)
    assert response.status_code == status
    assert response.get_json()["code"] == status and response.get_json()["message"]


def test_a_zombie_process_holds_no_lease():
    import os

    pid = os.fork()
    if pid == 0:  # the child exits at once and stays a zombie until reaped below
        os._exit(0)
    try:
        import time

        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(pid)
        assert pid_alive(os.getpid())
    finally:
        os.waitpid(pid, 0)
