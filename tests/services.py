"""The services the backend tests talk to, and their pytest fixtures.

- **PostgreSQL**: the machine's server (``GATEWAY_TEST_POSTGRES``, default
  ``host=127.0.0.1 port=5432 user=postgres dbname=postgres``). The session creates a fresh
  database of its own and drops it at the end; each test gets a fresh schema in it.
- **S3 and DynamoDB**: ``moto_server`` (from the ``moto[server]`` package) started by the
  session as its own process on a free loopback port. The code under test talks to it over
  HTTP with SigV4, exactly as to AWS; each test gets a fresh bucket (a fresh DynamoDB table).
- **A PostgreSQL the tests may stop**: :class:`ThrowawayPostgres`, a cluster made with
  ``initdb`` in a temporary folder, on a free loopback port, run as the ``postgres`` user
  when the tests run as root.

With ``CI=true`` a service that cannot be reached or started fails the tests that need it
(a skipped backend is an untested backend); elsewhere they are skipped with the reason.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import (
    free_port,
    multipart_body,
    multipart_content_type,
    multipart_parts,
)

# As in tests/conftest.py (which imports this module's fixtures, so it is not imported here).
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

ADMIN_DSN = os.environ.get("GATEWAY_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION = "testing-key", "testing-secret", "us-east-1"


def missing_service(message: str):
    """Fail under CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM to a helper server started in a session of its own, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - anything means "not yet"
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout:g} s: {last}")


# --- S3: moto_server ----------------------------------------------------------------------

class MotoServer:
    """``moto_server`` on 127.0.0.1, as its own process; :meth:`stop` and :meth:`start` again
    keep the port (its in-memory state is lost: buckets must be created again)."""

    def __init__(self, port: int | None = None, log_dir: Path | None = None):
        self.port = port or free_port()
        self.log_path = Path(log_dir or tempfile.gettempdir()) / f"moto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "MotoServer":
        import requests

        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {self.log()}")
            return requests.get(self.endpoint_url + "/moto-api/", timeout=1).status_code < 500

        _wait(up, timeout, f"moto_server on port {self.port}")
        return self

    def stop(self) -> None:
        stop_process_group(self.proc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def client(self):
        """A boto3 client of the test itself (for set-up and for checking what is stored)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=S3_REGION,
                            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
                            config=Config(signature_version="s3v4", retries={"max_attempts": 2}))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"gw-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def dynamodb_settings(self, table: str | None = None) -> dict[str, str]:
        """Gateway settings (dotted names) for the dynamodb metadata store on ``table`` (a new
        name when None; ``gateway metadata-table create`` or the store's ``create_table`` makes it)."""
        return {"storage.metadata_backend": "dynamodb",
                "storage.dynamodb_table": table or f"gw-meta-{uuid.uuid4().hex[:16]}",
                "storage.dynamodb_endpoint_url": self.endpoint_url, "storage.dynamodb_region": S3_REGION,
                "storage.dynamodb_access_key_id": S3_ACCESS_KEY, "storage.dynamodb_secret_access_key": S3_SECRET_KEY}

    def settings(self, bucket: str) -> dict[str, str]:
        """Gateway settings (dotted names) for the s3 blob store on ``bucket``."""
        return {"storage.blob_backend": "s3", "storage.s3_bucket": bucket,
                "storage.s3_endpoint_url": self.endpoint_url, "storage.s3_region": S3_REGION,
                "storage.s3_access_key_id": S3_ACCESS_KEY, "storage.s3_secret_access_key": S3_SECRET_KEY,
                "storage.s3_addressing_style": "path"}


# --- PostgreSQL -----------------------------------------------------------------------------

def pg_connect(dsn: str = ADMIN_DSN, **kwargs):
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=3, **kwargs)


def with_schema(dsn: str, schema: str) -> str:
    """``dsn`` with ``search_path`` set to ``schema`` first (then ``public``, where pg_trgm is)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    options = conninfo_to_dict(dsn).get("options") or ""
    return make_conninfo(dsn, options=f"{options} -c search_path={schema},public".strip())


class PostgresDatabase:
    """A database of its own on the machine's server, dropped at the end."""

    def __init__(self, admin_dsn: str = ADMIN_DSN):
        from psycopg.conninfo import make_conninfo

        self.admin_dsn = admin_dsn
        self.name = f"gwtest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with pg_connect(admin_dsn) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.dsn = make_conninfo(admin_dsn, dbname=self.name)
        with pg_connect(self.dsn) as conn:
            # In public, on every test schema's search_path: the migrations find it there.
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")

    def new_schema(self) -> str:
        """A DSN whose tables live in a fresh, empty schema."""
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with pg_connect(self.dsn) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return with_schema(self.dsn, schema)

    def drop(self) -> None:
        with contextlib.suppress(Exception), pg_connect(self.admin_dsn) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
                   if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class ThrowawayPostgres:
    """A PostgreSQL cluster of the test's own, on a free loopback port: stop and start it to
    see what the gateway does when its database goes away and comes back."""

    def __init__(self):
        self.bindir = _pg_bindir()
        if self.bindir is None:
            raise FileNotFoundError("initdb not found (Debian package postgresql-15)")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.root / "data"
        self.as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-instructions", "--locale=C.UTF-8")
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stdout[-1500:]} {result.stderr[-1500:]}")

    def start(self) -> "ThrowawayPostgres":
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        """A fast shutdown: sessions are cut, as when a server or its host goes down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# --- fixtures (imported by tests/conftest.py) ---------------------------------------------

@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """The session's S3 server (moto_server on loopback)."""
    try:
        server = MotoServer(log_dir=tmp_path_factory.mktemp("moto")).start()
    except (OSError, RuntimeError) as exc:
        missing_service(f"cannot start moto_server (pip install 'moto[server]'): {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return moto_server.create_bucket()


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh database of this session on the machine's PostgreSQL; on a machine where none
    answers at ``ADMIN_DSN``, on a cluster of the session's own (Debian's server binaries,
    installed by ./manage.sh)."""
    own = None
    try:
        database = PostgresDatabase()
    except Exception as exc:  # noqa: BLE001 - psycopg missing, server down, no permission
        if _pg_bindir() is None:
            missing_service(f"PostgreSQL is not reachable at {ADMIN_DSN!r} ({exc}) and initdb is not installed "
                            "(apt-get install postgresql)")
        try:
            own = ThrowawayPostgres().start()
            database = PostgresDatabase(own.dsn)
        except Exception as exc2:  # noqa: BLE001
            if own is not None:
                own.destroy()
            missing_service(f"PostgreSQL is not reachable at {ADMIN_DSN!r} ({exc}), and a cluster of the "
                            f"tests' own did not start: {exc2}")
    yield database
    database.drop()
    if own is not None:
        own.destroy()


@pytest.fixture
def postgres_dsn(postgres_database) -> str:
    """A DSN whose tables live in a fresh, empty schema of the session's database."""
    return postgres_database.new_schema()


# --- helpers of the end-to-end tests on shared stores ----------------------------------------

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def env_of(settings: dict[str, object]) -> dict[str, str]:
    """Dotted settings as the environment variables of a ``gateway`` process."""
    return {"GATEWAY_" + name.upper().replace(".", "__"): str(value) for name, value in settings.items()}


def shared_store_env(postgres_dsn: str, moto: MotoServer, bucket: str, **settings) -> dict[str, str]:
    """The environment of a gateway process on PostgreSQL + S3 (DIMSE off: several of them run
    on one machine)."""
    from gateway.config import SETTINGS

    values: dict[str, object] = {"storage.index_backend": "postgresql", "storage.postgres_dsn": postgres_dsn,
                                 **moto.settings(bucket), "storage.fsync": "false", **settings}
    if any(s.name == "dimse.enabled" for s in SETTINGS):
        values.setdefault("dimse.enabled", "false")
    return env_of(values)


def dicom_instance(study: str, series: str | None = None, sop: str | None = None, *, size: int = 32,
                   frames: int = 1, seed: int = 0, patient: str = "Shared^Store") -> bytes:
    """A CT image (``frames`` > 1: multi-frame) as Part 10 bytes, with random pixels."""
    import io

    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sop = sop or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series or generate_uid()
    ds.PatientName, ds.PatientID = patient, "SHARED-1"
    ds.Modality, ds.InstanceNumber = "CT", 1
    ds.StudyDate, ds.StudyTime = "20240506", "090000"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = np.random.default_rng(seed).integers(0, 4096, (frames, size, size), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def stow(base_url: str, instances: list[bytes], timeout: float = 120, *, headers: dict | None = None):
    """POST instances to ``{base_url}/dicom-web/studies`` as one multipart/related body
    (``headers``: the credentials, e.g. ``ServerProcess.auth_headers``)."""
    import requests

    boundary = "shared-store-boundary"
    return requests.post(f"{base_url}/dicom-web/studies", data=multipart_body(instances, boundary), timeout=timeout,
                         headers={"Content-Type": multipart_content_type(boundary),
                                  "Accept": "application/dicom+json", **(headers or {})})


def retrieve_parts(url: str, accept: str = DICOM_ANY, timeout: float = 120, *,
                   headers: dict | None = None) -> list[bytes]:
    """The parts of a WADO-RS multipart/related response."""
    import requests

    response = requests.get(url, headers={"Accept": accept, **(headers or {})}, timeout=timeout)
    assert response.status_code == 200, (response.status_code, response.text[:500])
    return [body for _, body in multipart_parts(response)]
