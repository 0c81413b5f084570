"""Logs as an operations team ships them: with ``log.format = json`` every line the server
writes (the app's, gunicorn's own, the DIMSE listener's) is one JSON object; access lines carry
their fields, measured to the last byte of a streamed response; audit records are nested
objects. The text format stays one readable line per event."""
from __future__ import annotations

import json
import socket
import time

import pytest
from pydicom.uid import generate_uid

from tests.conftest import ServerProcess
from tests.services import dicom_instance, stow

pytestmark = pytest.mark.e2e

ACCESS_FIELDS = {"time", "level", "logger", "request_id", "message", "method", "route", "path", "status", "door",
                 "principal", "clinic", "client", "bytes_in", "bytes", "ttfb_ms", "total_ms"}


def _traffic(server) -> tuple[str, str]:
    study, series = generate_uid(), generate_uid()
    instances = [dicom_instance(study, series, size=64, seed=i) for i in range(20)]
    assert stow(server.url, instances, headers=server.auth_headers).status_code == 200
    retrieve = server.http.get(f"{server.dicomweb}/studies/{study}/series/{series}", timeout=60,
                               headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert retrieve.status_code == 200
    assert server.http.get(f"{server.dicomweb}/studies/{generate_uid()}/metadata", timeout=30).status_code == 404
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # refused by gunicorn itself
        sock.sendall(b"GET /dicom-web/studies?x=\xff HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(65536)
    return study, str(len(retrieve.content))


def _lines(server, wait_for: str) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = server.log_path.read_text(errors="replace")
        if wait_for in text:
            return text.splitlines()
        time.sleep(0.2)
    raise AssertionError(f"{wait_for!r} never logged: {text[-2000:]}")


def test_json_logs_are_one_object_per_line_with_fields(tmp_path):
    server = ServerProcess(tmp_path / "data", env={"GATEWAY_LOG__FORMAT": "json", "GATEWAY_LOG__LEVEL": "info"})
    server.start()
    try:
        study, size = _traffic(server)
        lines = _lines(server, "Invalid request from ip")
    finally:
        server.stop()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line parses
    access = [e for e in entries if e["logger"] == "gateway.access"]
    assert access and all(ACCESS_FIELDS <= set(e) for e in access), access[:2]
    stored = [e for e in access if e["method"] == "POST" and e["route"] == "/dicom-web/studies"]
    assert stored and stored[0]["status"] == 200 and stored[0]["principal"] == "e2e" and stored[0]["bytes_in"] > 0
    assert stored[0]["clinic"] == "default" and stored[0]["client"] == "127.0.0.1" and stored[0]["door"] == "dicomweb"
    streamed = [e for e in access if e["route"] == "/dicom-web/studies/<study>/series/<series>"]
    assert streamed and streamed[0]["bytes"] == int(size) and streamed[0]["total_ms"] >= streamed[0]["ttfb_ms"]
    assert any(e["status"] == 404 for e in access)
    audit = [e for e in entries if e["logger"] == "gateway.audit"]
    assert any(isinstance(e["audit"], dict) and e["audit"]["action"] == "store"
               and e["audit"]["resource"] == f"study:{study}" for e in audit), audit[:3]
    gunicorn = [e for e in entries if e["logger"].startswith("gunicorn")]
    assert any("Invalid request" in e["message"] for e in gunicorn), gunicorn
    assert any("Booting worker" in e["message"] for e in gunicorn)


def test_text_logs_are_readable_lines(tmp_path):
    server = ServerProcess(tmp_path / "data", env={"GATEWAY_LOG__LEVEL": "info"}).start()
    try:
        study, _ = _traffic(server)
        lines = _lines(server, "Invalid request from ip")
    finally:
        server.stop()
    access = [line for line in lines if " gateway.access: POST /dicom-web/studies -> 200" in line]
    assert access and " B in " in access[0] and "first byte" in access[0], lines[-20:]
    audit = [line for line in lines if " gateway.audit: audit store ok " in line]
    assert audit and f'"resource": "study:{study}"' in "".join(audit)
    assert not any(line.lstrip().startswith("{") for line in lines)
