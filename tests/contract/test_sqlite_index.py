"""The SQLite index backend against the contracts of every store it offers."""
from __future__ import annotations

import sqlite3

import pytest


from storage.index.sqlite import SqliteIndexStore  # noqa: E402
from storage.records import AuditQuery, AuditRecord, Job  # noqa: E402
from tests.contract.annotations import (  # noqa: E402
    AnnotationStoreContract,
    MaskStoreContract,
    ProjectStoreContract,
    UserStoreContract,
)
from tests.contract.audit import AuditLogContract  # noqa: E402
from tests.contract.backend import IndexBackendContract  # noqa: E402
from tests.contract.derived import DerivedStoreContract  # noqa: E402
from tests.contract.instances import InstanceIndexContract, QueryPlanChecks, make_instance  # noqa: E402
from tests.contract.jobs import JobQueueContract  # noqa: E402
from tests.contract.shares import ShareStoreContract  # noqa: E402
from tests.contract.uploads import UploadStoreContract  # noqa: E402


class SqliteBackend:
    backend_class = SqliteIndexStore

    @staticmethod
    def backend_code(backend) -> str:
        return f"from storage.index.sqlite import SqliteIndexStore; backend = SqliteIndexStore({backend.path!r})"

    @pytest.fixture
    def backend(self, tmp_path):
        backend = SqliteIndexStore(tmp_path / "i.sqlite3")
        applied = backend.migrate()
        assert applied[0] == "0001_initial.sql" and applied == sorted(applied)
        yield backend
        backend.close()


class TestSqliteBackend(IndexBackendContract, SqliteBackend):
    def test_survives_reopening(self, backend, tmp_path):
        backend.instances.add_instance(make_instance(), replace=False)
        backend.close()
        reopened = SqliteIndexStore(tmp_path / "i.sqlite3")
        try:
            assert reopened.migrate() == []
            assert reopened.instances.find_instance("c1", "1.1.1.1") is not None
        finally:
            reopened.close()

    def test_from_settings_uses_data_dir(self, settings):
        backend = SqliteIndexStore.from_settings(settings)
        assert backend.path == str(settings.data_dir / "index.sqlite3")

    def test_audit_log_is_append_only(self, backend):
        backend.audit.append([AuditRecord(at=1, action="read", outcome="ok")])
        for statement in ("UPDATE audit_log SET outcome = 'denied'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                with backend.transaction() as cur:
                    cur.execute(statement)
        assert [r.outcome for r in backend.audit.search(AuditQuery())] == ["ok"]

    def test_a_commit_not_waiting_for_the_disk_leaves_the_connection_as_it_was(self, backend):
        synchronous = lambda: backend._connection().execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731
        assert synchronous() == 2  # FULL
        with backend.transaction(durable=False) as cur:
            assert cur.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, for this commit
            cur.execute("INSERT INTO audit_log (at, action, outcome) VALUES (1, 'read', 'ok')")
        assert synchronous() == 2
        with pytest.raises(sqlite3.IntegrityError):
            with backend.transaction(durable=False) as cur:
                cur.execute("INSERT INTO audit_log (at, action, outcome) VALUES (NULL, NULL, NULL)")
        assert synchronous() == 2
        assert len(backend.audit.search(AuditQuery())) == 1

    def test_the_forward_queue_of_older_versions_becomes_forward_jobs(self, tmp_path):
        """A deployment upgraded from a version with the forward_queue table keeps its forwards."""
        old = SqliteIndexStore(tmp_path / "old.sqlite3")
        scripts = [s for s in old._migration_scripts() if s[0] < "0005"]
        old._migration_scripts = lambda: scripts
        old.migrate()
        with old.transaction() as cur:
            cur.execute("INSERT INTO forward_queue (clinic_id, destination, rule, study_uid, series_uid, sop_uid, "
                        "status, attempts, next_attempt_at, last_error, created_at, updated_at) VALUES "
                        "('c1', 'PACS', 'all', '1.2', '1.2.3', '1.2.3.4', 'failed', 3, 5, 'down', 1, 2)")
        old.close()
        upgraded = SqliteIndexStore(tmp_path / "old.sqlite3")
        try:
            assert upgraded.migrate()[0] == "0005_jobs.sql"
            (job,) = upgraded.jobs.list_jobs()
            assert (job.kind, job.clinic_id, job.key, job.status, job.attempts, job.last_error) == \
                ("forward", "c1", "PACS/1.2.3.4", "failed", 3, "down")
            assert job.payload == {"destination": "PACS", "study_uid": "1.2", "series_uid": "1.2.3",
                                   "sop_uid": "1.2.3.4", "rule": "all"}
            upgraded.jobs.enqueue([Job("forward", "PACS/1.2.3.4", "c1", job.payload)], now_ms=10)
            assert [j.status for j in upgraded.jobs.list_jobs()] == ["pending"]  # the same idempotency key
        finally:
            upgraded.close()


class TestSqliteInstances(InstanceIndexContract, SqliteBackend):
    pass


class TestSqliteJobs(JobQueueContract, SqliteBackend):
    pass


class TestSqliteShares(ShareStoreContract, SqliteBackend):
    pass


class TestSqliteAudit(AuditLogContract, SqliteBackend):
    pass


class TestSqliteUploads(UploadStoreContract, SqliteBackend):
    pass


class TestSqliteDerived(DerivedStoreContract, SqliteBackend):
    pass


class TestSqliteUsers(UserStoreContract, SqliteBackend):
    pass


class TestSqliteProjects(ProjectStoreContract, SqliteBackend):
    pass


class TestSqliteAnnotations(AnnotationStoreContract, SqliteBackend):
    pass


class TestSqliteMasks(MaskStoreContract, SqliteBackend):
    pass


class TestSqliteQueryPlans(QueryPlanChecks, SqliteBackend):
    @staticmethod
    def analyze(backend) -> None:
        pass  # nobody runs ANALYZE on an embedded index: the fixed statistics of migration 0010 hold
