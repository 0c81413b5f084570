"""The production index backend: PostgreSQL through psycopg 3 and a connection pool.

The same stores, schema and behaviour as the SQLite backend (their SQL lives in
:mod:`storage.index.instances`, ``jobs``, ``shares``, ``audit``); what differs is here:

- connections come from a :class:`psycopg_pool.ConnectionPool` per process, opened on first
  use (and again after a fork), checked before use, so that the store recovers by itself
  when PostgreSQL comes back after an outage;
- a lost or refused connection, a pool timeout or a cancelled statement raises
  :class:`storage.errors.Unavailable` (the gateway answers 503 with Retry-After);
- migrations run under a transaction-level advisory lock, so that many processes starting
  at once apply each migration exactly once;
- concurrent writers of the same study (two gateway processes storing the same instance)
  meet a unique-key violation or a deadlock instead of SQLite's lock: the write
  transaction is retried, and the retry sees the other writer's rows (``duplicate``);
- job claims skip the rows other claimers hold (``FOR UPDATE SKIP LOCKED``);
- DICOM wildcards become ``LIKE`` with an escape character, and name searches order
  their matches by date in a way the planner cannot turn into a walk of the whole date
  index (see :meth:`PostgresIndexStore.study_order`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from storage.errors import StorageError, Unavailable
from storage.index.database import SqlDatabase
from storage.query import Query

logger = logging.getLogger(__name__)

T = TypeVar("T")

# pg_advisory_xact_lock key of the schema migrations (any constant shared by all versions).
MIGRATION_LOCK_ID = 0x64656E74616C6777  # "dentalgw"
# Errors of concurrent writers: the transaction is run again from the start.
_CONTENTION = (pg_errors.UniqueViolation, pg_errors.ForeignKeyViolation, pg_errors.DeadlockDetected,
               pg_errors.SerializationFailure, pg_errors.LockNotAvailable)
# How long one series of reconnection attempts lasts (1, 2, 4... s apart) before the pool gives
# it up; we then start another (_keep_trying). Short, so that attempts stay close together
# and the pool is back within about two seconds of PostgreSQL.
_RECONNECT_TIMEOUT = 5.0


class _Contention(Unavailable):
    """A concurrent writer got in the way; retried, and 503 if it keeps happening."""


def _like_pattern(pattern: str) -> str:
    """DICOM wildcards (``*`` any run, ``?`` one character) as a LIKE pattern with ``\\`` escapes."""
    out = []
    for c in pattern:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


class PostgresIndexStore(SqlDatabase):
    dialect = "postgresql"
    write_attempts = 5
    claim_lock = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str, *, password: str = "", pool_min: int = 1, pool_max: int = 10,
                 pool_timeout: float = 5.0, connect_timeout: int = 5, statement_timeout: float = 30.0,
                 application_name: str = "dental-pacs-gateway"):
        if not dsn:
            raise ValueError("no PostgreSQL connection string (setting storage.postgres_dsn)")
        self.dsn = dsn
        self.pool_min = pool_min
        self.pool_max = max(pool_max, pool_min)
        self.pool_timeout = pool_timeout
        self.statement_timeout = statement_timeout
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": connect_timeout,
            "application_name": application_name,
            # Notice a peer that vanished (network cut, failover) without waiting for the OS
            # default of two hours.
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
        }
        if password:
            self._connect_kwargs["password"] = password
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()
        super().__init__()

    @classmethod
    def from_settings(cls, settings) -> "PostgresIndexStore":
        dsn = settings["storage.postgres_dsn"]
        if not dsn:
            raise ValueError("storage.index_backend is 'postgresql' but storage.postgres_dsn is empty "
                                "(e.g. GATEWAY_STORAGE__POSTGRES_DSN=postgresql://gateway@db.example:5432/pacs)")
        return cls(dsn, password=settings["storage.postgres_password"],
                   pool_min=settings["storage.postgres_pool_min"], pool_max=settings["storage.postgres_pool_max"],
                   pool_timeout=settings["storage.postgres_pool_timeout"],
                   connect_timeout=settings["storage.postgres_connect_timeout"],
                   statement_timeout=settings["storage.postgres_statement_timeout"])

    # --- connections -------------------------------------------------------------------
    def _configure(self, conn: psycopg.Connection) -> None:
        # Plan every statement with its values: a generic plan of "name LIKE $1" cannot use
        # the prefix indexes, and psycopg prepares statements it sees repeatedly.
        conn.execute("SET plan_cache_mode = force_custom_plan")
        if self.statement_timeout:
            conn.execute(f"SET statement_timeout = {int(self.statement_timeout * 1000)}")

    def _get_pool(self) -> ConnectionPool:
        pool, pid = self._pool, os.getpid()
        if pool is not None and self._pool_pid == pid:
            return pool
        with self._lock:
            if self._pool is None or self._pool_pid != pid:
                # A pool inherited through fork has no threads and shares sockets with the
                # parent: leave it alone and open our own.
                self._pool = ConnectionPool(
                    self.dsn, kwargs=dict(self._connect_kwargs), min_size=self.pool_min, max_size=self.pool_max,
                    timeout=self.pool_timeout, open=False, configure=self._configure,
                    check=ConnectionPool.check_connection, reconnect_timeout=_RECONNECT_TIMEOUT,
                    reconnect_failed=self._keep_trying, max_idle=600, max_lifetime=3600,
                    name=f"gateway-index-{pid}")
                self._pool.open(wait=False)
                self._pool_pid = pid
            return self._pool

    @staticmethod
    def _kick(pool: ConnectionPool) -> None:
        """Start a connection attempt now if none is under way (``check`` grows a pool that is
        short of connections)."""
        with contextlib.suppress(Exception):
            pool.check()

    @classmethod
    def _keep_trying(cls, pool: ConnectionPool) -> None:
        """A series of reconnection attempts failed: start another one, so that the pool keeps
        trying while PostgreSQL is away instead of waiting for a request to ask."""
        logger.warning("PostgreSQL unreachable for %g s; still trying", _RECONNECT_TIMEOUT)
        cls._kick(pool)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg's errors as storage errors."""
        try:
            yield
        except PoolTimeout as exc:
            self._kick(self._get_pool())
            raise Unavailable(f"PostgreSQL index unreachable: no connection within {self.pool_timeout:g} s "
                              f"({exc})") from exc
        except _CONTENTION as exc:
            raise _Contention(f"concurrent write: {exc.sqlstate} {exc}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise Unavailable(f"PostgreSQL index failed: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL index error: {type(exc).__name__}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[psycopg.Cursor]:
        with self._errors(), self._get_pool().connection() as conn, conn.transaction(), conn.cursor() as cur:
            if not durable:  # this transaction only: the commit returns before its WAL is flushed
                cur.execute("SET LOCAL synchronous_commit = off")
            yield cur

    @contextlib.contextmanager
    def read(self) -> Iterator[psycopg.Cursor]:
        with self._errors(), self._get_pool().connection() as conn, conn.cursor() as cur:
            yield cur

    def retrying(self, func: Callable[[], T]) -> T:
        for attempt in range(1, self.write_attempts + 1):
            try:
                return func()
            except _Contention as exc:
                if attempt == self.write_attempts:
                    raise
                logger.info("index write retried after a concurrent write (attempt %d): %s", attempt, exc)
                time.sleep(random.uniform(0.002, 0.02) * attempt)
        raise AssertionError("unreachable")

    # --- dialect -----------------------------------------------------------------------
    def sql(self, statement: str) -> str:
        return statement.replace("%", "%%").replace("?", "%s")

    def id_in(self, select: str) -> str:
        # "id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)" may be planned as a join that runs
        # the sub-select more than once and leases more than n rows; an array is built once.
        return f"id = ANY(ARRAY({select}))"

    def wildcard(self, expr: str, pattern: str) -> tuple[str, list[Any]]:
        return f"{expr} LIKE ? ESCAPE '\\'", [_like_pattern(pattern)]

    # --- migrations --------------------------------------------------------------------
    def _lock_migrations(self, cur) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))

    def _run_script(self, cur, script: str) -> None:
        # Whole, in one round trip: the scripts hold DO blocks, whose bodies contain ";\n".
        cur.execute(script)

    # --- the rest ------------------------------------------------------------------------
    def ping(self) -> None:
        with self.read() as cur:
            cur.execute("SELECT count(*) FROM schema_migrations")

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.close(timeout=5)
