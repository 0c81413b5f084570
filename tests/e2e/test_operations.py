"""What the operations team relies on, against real servers: forwarding headers believed from
a trusted proxy only (audit address, the URLs handed out), and readiness that covers every
enabled door (the DIMSE listener accepts associations once /readyz says ready)."""
from __future__ import annotations

import socket

import pytest
import requests
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import ServerProcess
from tests.e2e.dimse_support import SCP_AE, DimseServer
from tests.services import dicom_instance, stow

pytestmark = pytest.mark.e2e

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org"}


def _trusting(tmp_path_factory, proxies: str):
    srv = ServerProcess(tmp_path_factory.mktemp("proxies") / "data",
                        env={"GATEWAY_SERVER__TRUSTED_PROXIES": proxies}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory):
    """A gateway whose trusted proxy is loopback: the tests' requests come from it."""
    yield from _trusting(tmp_path_factory, "127.0.0.1/32")


@pytest.fixture(scope="module")
def not_behind_proxy(tmp_path_factory):
    """A gateway that trusts another network: loopback's forwarding headers are forged."""
    yield from _trusting(tmp_path_factory, "10.0.0.0/8")


def _store_through(server, headers: dict) -> tuple[str, dict]:
    study = generate_uid()
    response = stow(server.url, [dicom_instance(study, size=16)], headers={**server.auth_headers, **headers})
    assert response.status_code == 200, response.text
    return study, response.json()


def _audit_client(server, study: str) -> set[str]:
    records = server.http.get(server.url + "/api/v1/audit", params={"resource": f"study:{study}"}, timeout=30)
    assert records.status_code == 200, records.text
    return {r["client"] for r in records.json()["records"] if r["action"] == "store"}


def test_a_trusted_proxys_forwarding_headers_are_believed(behind_proxy):
    study, body = _store_through(behind_proxy, FORWARDED)
    assert body["00081190"]["Value"][0] == f"https://pacs.example.org/dicom-web/studies/{study}"
    assert _audit_client(behind_proxy, study) == {"203.0.113.7"}
    signed = behind_proxy.http.post(behind_proxy.url + "/api/v1/signed-urls", headers=FORWARDED, timeout=30,
                                    json={"path": f"/dicom-web/studies/{study}/metadata"})
    assert signed.status_code in (200, 201), signed.text
    assert signed.json()["url"].startswith("https://pacs.example.org/dicom-web/"), signed.json()


def test_forwarding_headers_from_an_untrusted_address_are_ignored(not_behind_proxy):
    study, body = _store_through(not_behind_proxy, FORWARDED)
    assert body["00081190"]["Value"][0] == f"{not_behind_proxy.dicomweb}/studies/{study}"
    assert _audit_client(not_behind_proxy, study) == {"127.0.0.1"}


def test_ready_means_the_dimse_listener_accepts_associations(tmp_path):
    server = DimseServer(tmp_path / "data")
    ServerProcess.start(server)  # returns at the first /readyz 200, no waiting for the port
    try:
        ae = AE(ae_title="GWTEST")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=SCP_AE)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        ae.shutdown()
        ready = requests.get(server.url + "/readyz", timeout=10).json()
        assert ready["checks"]["dimse"] == "ok", ready
        assert requests.get(server.url + "/readyz/dimse", timeout=10).status_code == 200
    finally:
        server.stop()


def test_not_ready_while_the_dimse_listener_cannot_listen(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))  # bound, never listening: the listener's port is taken
    server = DimseServer(tmp_path / "data")
    server.env["GATEWAY_DIMSE__PORT"] = str(blocker.getsockname()[1])
    try:
        with pytest.raises(RuntimeError, match="did not become ready"):
            ServerProcess.start(server, timeout=15)
        answer = requests.get(server.url + "/readyz", timeout=10)
        assert answer.status_code == 503 and answer.headers["Retry-After"], answer.text
        assert "does not accept connections" in answer.json()["checks"]["dimse"], answer.text
        assert requests.get(server.url + "/readyz/dimse", timeout=10).status_code == 503
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200  # alive, not ready
    finally:
        server.stop()
        blocker.close()


def test_the_dimse_probe_without_dimse_says_so(behind_proxy):
    answer = requests.get(behind_proxy.url + "/readyz/dimse", timeout=10)
    assert answer.status_code == 503 and "not enabled" in answer.json()["checks"]["dimse"]
    assert "dimse" not in requests.get(behind_proxy.url + "/readyz", timeout=10).json()["checks"]
