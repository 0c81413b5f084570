"""The embedded index backend: one SQLite file in WAL mode, one connection per thread. It offers
the instance index, the job queue, the share store and the audit log (:mod:`storage.index.database`)."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

from storage.errors import Unavailable
from storage.index.database import SqlDatabase

logger = logging.getLogger(__name__)


def _glob_escape(pattern: str) -> str:
    """DICOM wildcards (* ?) are GLOB's; other GLOB specials are made literal."""
    # One pass: chained str.replace calls would re-escape the "]" of "[[]".
    return "".join({"[": "[[]", "]": "[]]"}.get(c, c) for c in pattern)


class SqliteIndexStore(SqlDatabase):
    dialect = "sqlite"
    explain_prefix = "EXPLAIN QUERY PLAN "

    def __init__(self, path: Path | str, *, synchronous: str = "FULL"):
        self.path = str(path)
        self.synchronous = synchronous
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        super().__init__()

    @classmethod
    def from_settings(cls, settings) -> "SqliteIndexStore":
        # WAL with NORMAL survives a killed process; FULL also survives a power loss.
        return cls(settings.path("storage.sqlite_path", "index.sqlite3"),
                   synchronous="FULL" if settings["storage.fsync"] else "NORMAL")

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA busy_timeout=60000")
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot open SQLite index {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        conn = self._connection()
        relax = not durable and self.synchronous == "FULL"
        cur = conn.cursor()
        try:
            if relax:  # WAL with NORMAL: the commit is not fsynced (the next FULL one or a checkpoint is)
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("BEGIN IMMEDIATE")
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if relax:
                cur.execute(f"PRAGMA synchronous={self.synchronous}")
            cur.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Cursor]:
        cur = self._connection().cursor()
        try:
            yield cur
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"SQLite index read failed: {exc}") from exc
        finally:
            cur.close()

    def wildcard(self, expr: str, pattern: str) -> tuple[str, list[Any]]:
        return f"{expr} GLOB ?", [_glob_escape(pattern)]

    def ping(self) -> None:
        try:
            with self.read() as cur:
                cur.execute("SELECT count(*) FROM schema_migrations")
        except sqlite3.Error as exc:
            raise Unavailable(f"SQLite index unusable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()
