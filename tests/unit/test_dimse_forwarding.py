"""The forward queue (index store), the instance_stored plugin, the worker's retries, the admin endpoint."""
from __future__ import annotations

import socket

import pytest

from auth.base import EMBEDDED_PRINCIPAL
from gateway.config import load_settings
from gateway.dimse.forwarding import ForwardWorker, now_ms
from storage.base import ForwardItem
from storage.index.sqlite import SqliteIndexStore
from tests.data import sample_file as sample_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def index(tmp_path):
    store = SqliteIndexStore(tmp_path / "index.sqlite3")
    store.migrate()
    yield store
    store.close()


def _item(sop: str, destination: str = "PACS", clinic: str = "default") -> ForwardItem:
    return ForwardItem(clinic, destination, "1.2", "1.2.3", sop, rule="r")


# --- the queue in the index store --------------------------------------------------------------

def test_claim_leases_items_to_one_owner(index):
    index.enqueue_forwards([_item("1.1"), _item("1.2")], now_ms=1000)
    claimed = index.claim_forwards("a", now_ms=1000, lease_ms=60_000, limit=10)
    assert [i.sop_uid for i in claimed] == ["1.1", "1.2"]
    assert all(i.lease_owner == "a" and i.status == "pending" and i.attempts == 0 for i in claimed)
    assert index.claim_forwards("b", now_ms=2000, lease_ms=60_000, limit=10) == []
    # an expired lease can be claimed by another worker
    assert len(index.claim_forwards("b", now_ms=62_000, lease_ms=60_000, limit=1)) == 1


def test_finish_only_by_the_owner(index):
    index.enqueue_forwards([_item("1.1")], now_ms=1000)
    (item,) = index.claim_forwards("a", now_ms=1000, lease_ms=60_000, limit=10)
    assert not index.finish_forward(item.id, "b")
    assert index.finish_forward(item.id, "a")
    assert index.list_forwards() == []


def test_failure_reschedules_then_gives_up(index):
    index.enqueue_forwards([_item("1.1")], now_ms=1000)
    (item,) = index.claim_forwards("a", now_ms=1000, lease_ms=60_000, limit=10)
    assert index.fail_forward(item.id, "a", error="down", next_attempt_ms=5000, give_up=False, now_ms=1000)
    assert index.claim_forwards("a", now_ms=4999, lease_ms=60_000, limit=10) == []  # not due yet
    (item,) = index.claim_forwards("a", now_ms=5000, lease_ms=60_000, limit=10)
    assert item.attempts == 1 and item.last_error == "down"
    index.fail_forward(item.id, "a", error="refused 0xA900", next_attempt_ms=9000, give_up=True, now_ms=5000)
    assert index.claim_forwards("a", now_ms=10**12, lease_ms=60_000, limit=10) == []
    assert index.forward_counts() == {"pending": 0, "failed": 1}
    (failed,) = index.list_forwards(status="failed")
    assert failed.attempts == 2 and failed.last_error == "refused 0xA900" and failed.lease_owner is None


def test_retry_makes_failed_items_due_now(index):
    index.enqueue_forwards([_item("1.1"), _item("1.2")], now_ms=1000)
    for item in index.claim_forwards("a", now_ms=1000, lease_ms=60_000, limit=10):
        index.fail_forward(item.id, "a", error="x", next_attempt_ms=0, give_up=True, now_ms=1000)
    first = index.list_forwards(status="failed")[0]
    assert index.retry_forwards(ids=[first.id], now_ms=2000) == 1
    assert index.retry_forwards(ids=[first.id], now_ms=2000) == 0  # no longer failed
    assert index.forward_counts() == {"pending": 1, "failed": 1}
    assert index.retry_forwards(now_ms=3000) == 1  # every failed one
    assert [i.attempts for i in index.claim_forwards("b", now_ms=3000, lease_ms=1, limit=10)] == [0, 0]


def test_queued_again_while_being_sent_is_not_lost(index):
    """An instance replaced while its old version is being sent is sent again."""
    index.enqueue_forwards([_item("1.1")], now_ms=1000)
    (item,) = index.claim_forwards("a", now_ms=1000, lease_ms=60_000, limit=10)
    index.enqueue_forwards([_item("1.1")], now_ms=1500)  # same clinic, destination and SOP: one row
    assert not index.finish_forward(item.id, "a")  # the sender's success does not remove the new request
    (again,) = index.claim_forwards("b", now_ms=1500, lease_ms=60_000, limit=10)
    assert again.id == item.id and again.attempts == 0


def test_leases_of_dead_workers_are_released(index, tmp_path):
    index.enqueue_forwards([_item("1.1")], now_ms=now_ms())
    host = socket.gethostname()
    dead_owner = f"{host}:999999999:1"  # no such pid
    index.claim_forwards(dead_owner, now_ms=now_ms(), lease_ms=10**9, limit=10)
    assert index.forward_lease_owners() == [dead_owner]
    settings = load_settings(overrides={"storage.data_dir": str(tmp_path)}, environ={})

    class Services:
        pass

    services = Services()
    services.index = index
    worker = ForwardWorker(services, settings)
    assert worker.release_dead_leases() == 1
    assert index.forward_lease_owners() == []


def test_lists_filter_by_status_and_clinic(index):
    index.enqueue_forwards([_item("1.1", clinic="a"), _item("1.2", clinic="b")], now_ms=1000)
    assert [i.sop_uid for i in index.list_forwards(clinic_id="b")] == ["1.2"]
    assert index.list_forwards(status="failed") == []
    assert index.forward_counts("a") == {"pending": 1, "failed": 0}
    assert [i.sop_uid for i in index.list_forwards(limit=1, offset=1)] == ["1.2"]


# --- the plugin, the worker and the admin endpoint on a real app ------------------------------

def _app(tmp_path, rules, **overrides):
    from gateway.app import create_app

    settings = load_settings(overrides={
        "storage.data_dir": str(tmp_path / "data"), "storage.fsync": False, "log.level": "warning",
        "dimse.destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": _free_port()},
                               {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": _free_port()}],
        "forward.rules": rules, "forward.retry_initial": 10.0, "forward.max_attempts": 2, **overrides,
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


def test_stored_instances_are_queued_per_matching_rule(app_with_rules):
    index = app_with_rules.extensions["gateway"].index
    ct = _ingest(app_with_rules, "CT_small.dcm")
    mr = _ingest(app_with_rules, "MR_small.dcm")
    queued = {(i.sop_uid, i.destination, i.rule) for i in index.list_forwards()}
    assert queued == {(ct.sop_instance_uid, "PACS", "all"), (mr.sop_instance_uid, "PACS", "all"),
                      (mr.sop_instance_uid, "ARCHIVE", "mr-only")}
    _ingest(app_with_rules, "CT_small.dcm")  # a duplicate is not stored again, so not queued again
    assert len(index.list_forwards()) == 3


def test_worker_backs_off_then_gives_up(app_with_rules):
    services = app_with_rules.extensions["gateway"]
    ct = _ingest(app_with_rules, "CT_small.dcm")
    worker = ForwardWorker(services, services.settings)
    assert worker.run_once() == 1  # nothing listens on PACS' port
    (item,) = services.index.list_forwards()
    assert item.status == "pending" and item.attempts == 1 and "could not be reached" in item.last_error
    assert 9_000 < item.next_attempt_at - now_ms() <= 10_000  # forward.retry_initial
    assert worker.run_once() == 0  # not due
    services.index.retry_forwards(now_ms=now_ms())  # (no effect: it is pending, not failed)
    index = services.index
    with index._transaction() as cur:  # make it due now
        cur.execute("UPDATE forward_queue SET next_attempt_at = 0")
    assert worker.run_once() == 1
    (item,) = index.list_forwards()
    assert item.status == "failed" and item.attempts == 2  # forward.max_attempts
    assert item.sop_uid == ct.sop_instance_uid


def test_worker_drops_forwards_of_deleted_instances(app_with_rules):
    services = app_with_rules.extensions["gateway"]
    ct = _ingest(app_with_rules, "CT_small.dcm")
    services.deleter.delete(EMBEDDED_PRINCIPAL, ct.study_uid)
    assert ForwardWorker(services, services.settings).run_once() == 1
    assert services.index.list_forwards() == []


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
    (claimed,) = services.index.claim_forwards(owner, now_ms=now_ms(), lease_ms=1000, limit=1)
    services.index.fail_forward(claimed.id, owner, error="0xA900", next_attempt_ms=0, give_up=True, now_ms=now_ms())
    assert client.get("/api/v1/admin/forwards?status=failed").get_json()["counts"]["failed"] == 1
    response = client.post("/api/v1/admin/forwards/retry", json={"ids": [item["id"]]})
    assert response.status_code == 200 and response.get_json() == {"retried": 1}
    assert client.post("/api/v1/admin/forwards/retry").get_json() == {"retried": 0}


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

    from gateway.dimse.forwarding import _pid_alive

    pid = os.fork()
    if pid == 0:  # the child exits at once and stays a zombie until reaped below
        os._exit(0)
    try:
        import time

        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _pid_alive(pid)
        assert _pid_alive(os.getpid())
    finally:
        os.waitpid(pid, 0)
