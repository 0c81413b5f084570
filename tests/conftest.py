"""Shared fixtures: settings on a temporary data folder, the app, and a real server process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gateway.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(tmp_path):
    return load_settings(overrides={"storage.data_dir": str(tmp_path / "data"), "log.level": "warning",
                                    "storage.fsync": False}, environ={})


@pytest.fixture
def app(settings):
    from gateway.app import create_app

    app = create_app(settings)
    yield app
    app.extensions["gateway"].close()


@pytest.fixture
def client(app):
    return app.test_client()


class ServerProcess:
    """``gateway serve`` in a subprocess on a loopback port, as a user runs it."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.env = {**os.environ, "GATEWAY_STORAGE__DATA_DIR": str(self.data_dir),
                    "GATEWAY_SERVER__PORT": str(self.port), "GATEWAY_SERVER__WORKERS": "2",
                    "GATEWAY_SERVER__THREADS": "4", "GATEWAY_LOG__LEVEL": "warning",
                    # HTTP-only unless a test asks: every listener would want port 11112.
                    "GATEWAY_DIMSE__ENABLED": "false", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def start(self, timeout: float = 60) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self, sig=signal.SIGKILL) -> None:
        """Kill the whole process group (gunicorn master and workers)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real gateway shared by the end-to-end tests of a session (they use distinct UIDs)."""
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path):
    """A real gateway of its own, for tests that count what is stored or kill the server."""
    srv = ServerProcess(tmp_path / "data")
    yield srv
    srv.stop()


# The backend services (the machine's PostgreSQL, moto_server for S3) and their fixtures.
from tests.services import moto_server, postgres_database, postgres_dsn, s3_bucket  # noqa: E402,F401
