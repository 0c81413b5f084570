"""Forwarding: instances stored by any front door reach the remote AE exactly once, even when it
is down for a while and the gateway is killed in between; failures are listed and retried."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import ServerProcess
from tests.e2e.dimse_support import DimseServer, associate, dataset_bytes, fresh_copy
from tests.helpers import free_port, multipart_body, multipart_content_type

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST_RETRIES = {
    "GATEWAY_FORWARD__RETRY_INITIAL": "0.2",
    "GATEWAY_FORWARD__RETRY_MAX": "1",
    "GATEWAY_FORWARD__POLL_INTERVAL": "0.2",
    "GATEWAY_FORWARD__MAX_ATTEMPTS": "1000",
    "GATEWAY_DIMSE__CONNECTION_TIMEOUT": "2",
}


class RecordingSCP:
    """The remote AE: a storage SCP that records every C-STORE it gets, and can refuse some."""

    def __init__(self, port: int):
        self.port = port
        self.received: list[tuple[str, str, bytes]] = []  # (SOP Instance UID, transfer syntax, data set)
        self.refuse: set[str] = set()
        self._lock = threading.Lock()
        self.server = None

    def _on_store(self, event):
        from tests.e2e.dimse_support import dataset_bytes as raw

        sop = event.request.AffectedSOPInstanceUID
        if sop in self.refuse:
            return 0xA900
        with self._lock:
            self.received.append((sop, str(event.context.transfer_syntax), raw(Path(event.dataset_path))))
        return 0x0000

    def start(self) -> "RecordingSCP":
        ae = AE(ae_title="FWDDEST")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, AllTransferSyntaxes)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def sops(self) -> list[str]:
        with self._lock:
            return sorted(sop for sop, _, _ in self.received)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def _wait(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _forwards(server, **params) -> dict:
    response = server.http.get(f"{server.url}/api/v1/admin/forwards", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _cli(server, *args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "forwards", *args], env=server.env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _stow(server, paths: list[Path]) -> None:
    boundary = uuid.uuid4().hex
    body = multipart_body([p.read_bytes() for p in paths], boundary)
    response = server.http.post(f"{server.dicomweb}/studies", data=body, timeout=60, headers={
        "Content-Type": multipart_content_type(boundary)})
    assert response.status_code == 200, response.text


def _c_store(server, paths: list[Path]) -> None:
    ae = AE(ae_title="GWTEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = associate(server, ae)
    try:
        assert [assoc.send_c_store(p).Status for p in paths] == [0x0000] * len(paths)
    finally:
        assoc.release()


def _sop(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


@pytest.fixture(autouse=True)
def raw_dimse(monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)


def test_forwarding_remote_down_then_up_across_a_restart(tmp_path):
    remote_port = free_port()
    server = DimseServer(
        tmp_path / "data", env=FAST_RETRIES,
        destinations=[{"ae_title": "FWDDEST", "host": "127.0.0.1", "port": remote_port}],
        rules=[{"name": "everything", "to": ["FWDDEST"]}])
    remote = RecordingSCP(remote_port)
    try:
        server.start()
        study = generate_uid()
        by_stow = [fresh_copy("CT_small.dcm", tmp_path / "in", StudyInstanceUID=study) for _ in range(3)]
        by_dimse = [fresh_copy("CT_small.dcm", tmp_path / "in", StudyInstanceUID=study) for _ in range(3)]
        _stow(server, by_stow)
        _c_store(server, by_dimse)
        expected = sorted(_sop(p) for p in by_stow + by_dimse)

        # The remote is down: every instance is queued and retried with backoff.
        queue = _wait(lambda: (q := _forwards(server)) and q["counts"]["pending"] == 6
                      and all(i["attempts"] >= 2 for i in q["items"]) and q, what="retries while the remote is down")
        assert sorted(i["sop_uid"] for i in queue["items"]) == expected
        assert all("could not be reached" in i["last_error"] for i in queue["items"])
        assert "6 pending, 0 failed" in _cli(server)

        # The gateway dies (SIGKILL: HTTP workers, listener, forward worker), the remote comes up.
        server.kill()
        remote.start()
        assert remote.sops() == []
        server.start()
        _wait(lambda: _forwards(server)["counts"] == {"pending": 0, "failed": 0}, what="the queue to drain")
        assert remote.sops() == expected  # everything arrived, each instance exactly once
        sent = {sop: (ts, data) for sop, ts, data in remote.received}
        for path in by_stow + by_dimse:
            ts, data = sent[_sop(path)]
            assert ts == ExplicitVRLittleEndian
            assert data == dataset_bytes(path)  # as stored

        # A remote refusal that will not change (0xA900) fails at once, is listed, and is retried on demand.
        refused = fresh_copy("CT_small.dcm", tmp_path / "in", StudyInstanceUID=study)
        remote.refuse.add(_sop(refused))
        _stow(server, [refused])
        failed = _wait(lambda: _forwards(server, status="failed")["items"], what="the refused forward to fail")
        assert [i["sop_uid"] for i in failed] == [_sop(refused)]
        assert "0xA900" in failed[0]["last_error"] and failed[0]["attempts"] == 1
        cli = _cli(server, "--failed", "--json")
        assert [i["sop_uid"] for i in json.loads(cli)["items"]] == [_sop(refused)]
        remote.refuse.clear()
        response = server.http.post(f"{server.url}/api/v1/admin/forwards/retry", json={"ids": [failed[0]["id"]]},
                                 timeout=30)
        assert response.status_code == 200 and response.json() == {"retried": 1}
        _wait(lambda: _forwards(server)["counts"] == {"pending": 0, "failed": 0}, what="the retried forward")
        assert remote.sops() == sorted(expected + [_sop(refused)])
    finally:
        server.stop()
        remote.stop()


class SlowSCP(RecordingSCP):
    """A remote that holds each C-STORE for ``delay`` seconds while ``slow`` is set."""

    def __init__(self, port: int, delay: float):
        super().__init__(port)
        self.delay = delay
        self.slow = threading.Event()
        self.storing = threading.Event()  # a C-STORE has begun

    def _on_store(self, event):
        self.storing.set()
        if self.slow.is_set():
            time.sleep(self.delay)
        return super()._on_store(event)


def _worker(server, tmp_path, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--kind", "forward"], env=server.env,
                            stdout=log, stderr=subprocess.STDOUT)


def test_job_workers_without_a_listener_one_killed_mid_batch(tmp_path):
    """Without a DIMSE listener, `gateway serve` runs a worker child of its own; with
    worker.embedded = false only `gateway worker` processes send, and when one is killed with
    SIGKILL in the middle of a batch, another on the same host takes its jobs over."""
    remote_port = free_port()
    http_only = {**FAST_RETRIES, "GATEWAY_DIMSE__ENABLED": "false",
                 "GATEWAY_DIMSE__DESTINATIONS": json.dumps([{"ae_title": "FWDDEST", "host": "127.0.0.1",
                                                             "port": remote_port}]),
                 "GATEWAY_FORWARD__RULES": json.dumps([{"name": "everything", "to": ["FWDDEST"]}])}
    remote = SlowSCP(remote_port, delay=30).start()
    embedded = ServerProcess(tmp_path / "embedded", env=http_only).start()
    try:
        sent = fresh_copy("CT_small.dcm", tmp_path / "in", StudyInstanceUID=generate_uid())
        _stow(embedded, [sent])
        _wait(lambda: _sop(sent) in remote.sops(), what="the embedded worker's forward")
    finally:
        embedded.stop()

    server = ServerProcess(tmp_path / "data", env={**http_only, "GATEWAY_WORKER__EMBEDDED": "false"}).start()
    first = second = None
    try:
        study = generate_uid()
        paths = [fresh_copy("CT_small.dcm", tmp_path / "in", StudyInstanceUID=study) for _ in range(3)]
        remote.slow.set()
        remote.storing.clear()
        _stow(server, paths)
        time.sleep(1.5)
        assert not remote.storing.is_set()  # nobody sends: the server runs no worker
        first = _worker(server, tmp_path, "first")
        assert remote.storing.wait(60), "the first worker never sent"
        first.kill()  # SIGKILL, in the middle of the batch: its jobs stay leased to a dead process
        first.wait(timeout=30)
        remote.slow.clear()
        second = _worker(server, tmp_path, "second")
        _wait(lambda: _forwards(server)["counts"] == {"pending": 0, "failed": 0}, timeout=90,
              what="the second worker to take the jobs over")
        assert set(remote.sops()) >= {_sop(p) for p in paths}  # every instance arrived (at least once)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        server.stop()
        remote.stop()
