"""Shared fixtures: settings on a temporary data folder, the app, and a real server process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gateway.config import load_settings
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


class AuthActions:
    """Bearer tokens of an in-process app's local issuer (flaskr's ``auth`` helper)."""

    def __init__(self, app):
        from auth.local import LocalIssuer

        self.issuer = LocalIssuer.from_settings(app.config["GATEWAY_SETTINGS"])

    def token(self, clinic: str = "default", user: str = "tester", roles=("admin",), ttl: int = 3600) -> str:
        return self.issuer.issue(user=user, clinic=clinic, roles=list(roles), ttl=ttl)

    def headers(self, clinic: str = "default", user: str = "tester", roles=("admin",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(clinic, user, roles)}"}


@pytest.fixture
def auth(app):
    return AuthActions(app)


class ServerProcess:
    """``gateway serve`` in a subprocess on a loopback port, as a user runs it.

    Every request needs credentials: :attr:`token` is a bearer token of the server's local
    issuer (clinic ``default``, role ``admin``, made in process with the server's settings and
    signing key), :attr:`auth_headers` the header that carries it, :attr:`http` a
    ``requests.Session`` sending it, and :meth:`token_for` / :meth:`session` make others.
    """

    def __init__(self, data_dir: Path, port: int | None = None, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self._token: str | None = None
        self._http: requests.Session | None = None
        self.port = port or free_port()
        self.env = {**os.environ, "GATEWAY_STORAGE__DATA_DIR": str(self.data_dir),
                    "GATEWAY_SERVER__PORT": str(self.port), "GATEWAY_SERVER__WORKERS": "2",
                    "GATEWAY_SERVER__THREADS": "4", "GATEWAY_LOG__LEVEL": "warning",
                    # HTTP-only unless a test asks: every listener would want port 11112.
                    "GATEWAY_DIMSE__ENABLED": "false",
                    # No previews unless a test asks: every server would spend the cores on them.
                    "GATEWAY_PREVIEWS__ENABLED": "false", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    # --- credentials -------------------------------------------------------------------
    def token_for(self, clinic: str = "default", user: str = "e2e", roles=("admin",), ttl: int = 8 * 3600) -> str:
        """A token of this server's local issuer (its signing key is created if needed)."""
        from auth.local import LocalIssuer

        settings = load_settings(environ={k: v for k, v in self.env.items() if k != "GATEWAY_CONFIG"})
        return LocalIssuer.from_settings(settings).issue(user=user, clinic=clinic, roles=list(roles), ttl=ttl)

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.token_for()
        return self._token

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def session(self, token: str | None = None) -> requests.Session:
        """A new ``requests.Session`` that sends ``token`` (default: :attr:`token`)."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token}"
        return session

    @property
    def http(self) -> requests.Session:
        """The server's shared authenticated session (admin of clinic ``default``)."""
        if self._http is None:
            self._http = self.session()
        return self._http

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def start(self, timeout: float = 60) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.env.get("GATEWAY_AUTH__PROVIDER", "local") == "local":
            self.token  # creates the signing key before the server's workers read it
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
