"""The PostgreSQL index store against the index contract, plus what only PostgreSQL has:
many processes migrating and writing at once, lost connections, and the query plans.

Runs against the machine's PostgreSQL (tests/services.py): one database per session, one
fresh schema per test.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import pytest


from gateway.config import load_settings  # noqa: E402
from storage.errors import Unavailable  # noqa: E402
from storage.index.postgres import PostgresIndexStore, _like_pattern  # noqa: E402
from storage.query import Match, Query  # noqa: E402
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
from tests.helpers import free_port  # noqa: E402
from tests.services import pg_connect  # noqa: E402

pytestmark = pytest.mark.postgres


def _store(dsn: str, **kw) -> PostgresIndexStore:
    kw.setdefault("pool_max", 4)
    return PostgresIndexStore(dsn, **kw)


class PostgresBackend:
    backend_class = PostgresIndexStore

    @pytest.fixture
    def backend(self, postgres_dsn):
        backend = _store(postgres_dsn)
        applied = backend.migrate()
        assert applied[0] == "0001_initial.sql" and applied == sorted(applied)
        yield backend
        backend.close()

    @staticmethod
    def backend_code(backend) -> str:
        return f"from storage.index.postgres import PostgresIndexStore; backend = PostgresIndexStore({backend.dsn!r})"


class TestPostgresBackend(IndexBackendContract, PostgresBackend):
    # --- schema ----------------------------------------------------------------------------
    def test_every_sqlite_migration_has_a_postgresql_mirror(self):
        folder = resources.files("storage.index.migrations")
        names = {dialect: sorted(p.name for p in folder.joinpath(dialect).iterdir() if p.name.endswith(".sql"))
                 for dialect in ("sqlite", "postgresql")}
        assert names["postgresql"] == names["sqlite"]

    def test_tables_and_indexes(self, backend, postgres_dsn):
        with pg_connect(postgres_dsn) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
            indexes = {r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
        assert {"studies", "series", "instances", "patients", "schema_migrations", "shares", "audit_log", "jobs"} <= tables
        assert "forward_queue" not in tables
        assert {"studies_by_date", "studies_by_name", "studies_name_alpha_words_trgm",
                "studies_patient_id_trgm", "instances_by_series"} <= indexes

    def test_audit_log_is_append_only(self, backend):
        backend.audit.append([AuditRecord(at=1, action="read", outcome="ok")])
        for statement in ("UPDATE audit_log SET outcome = 'denied'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(Exception, match="append-only"):
                with backend.transaction() as cur:
                    cur.execute(statement)
        assert [r.outcome for r in backend.audit.search(AuditQuery())] == ["ok"]

    def test_a_commit_not_waiting_for_the_disk_changes_that_transaction_only(self, postgres_dsn):
        backend = _store(postgres_dsn, pool_min=1, pool_max=1)  # one connection: the same session throughout
        try:
            backend.migrate()
            with backend.transaction(durable=False) as cur:
                cur.execute("SHOW synchronous_commit")
                assert cur.fetchone()[0] == "off"
            with backend.read() as cur:
                cur.execute("SHOW synchronous_commit")
                assert cur.fetchone()[0] == "on"
        finally:
            backend.close()

    def test_concurrent_migrations_apply_once(self, postgres_dsn):
        stores = [_store(postgres_dsn, pool_max=1) for _ in range(6)]
        barrier = threading.Barrier(len(stores))

        def migrate(store):
            barrier.wait()
            return store.migrate()

        try:
            with ThreadPoolExecutor(len(stores)) as pool:
                results = list(pool.map(migrate, stores))
        finally:
            for store in stores:
                store.close()
        applied = [r for r in results if r]
        assert len(applied) == 1 and applied[0][0] == "0001_initial.sql"
        with pg_connect(postgres_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(applied[0])

    # --- failures and recovery --------------------------------------------------------------
    def test_unreachable_server_is_unavailable(self):
        store = PostgresIndexStore(f"host=127.0.0.1 port={free_port()} user=postgres dbname=x",
                                   pool_timeout=0.5, connect_timeout=1)
        try:
            for call in (store.ping, store.migrate,
                         lambda: store.instances.search(Query(level="study", clinic_id="c1")),
                         lambda: store.instances.add_instance(make_instance(), replace=False),
                         lambda: store.jobs.claim("w", kinds=["forward"], now_ms=1, lease_ms=1, limit=1),
                         lambda: store.shares.get_share("s1"), lambda: store.audit.search(AuditQuery())):
                with pytest.raises(Unavailable):
                    call()
        finally:
            store.close()

    def test_recovers_when_its_connections_are_killed(self, backend, postgres_dsn):
        store = backend.instances
        assert InstanceIndexContract.add(store) == "stored"
        with pg_connect(postgres_dsn) as conn:
            killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name = 'dental-pacs-gateway' AND datname = current_database() "
                                  "AND pid <> pg_backend_pid()"
                                  ).fetchone()[0]
        assert killed >= 1
        # The pool checks a connection before handing it out and replaces dead ones.
        assert store.find_instance("c1", "1.1.1.1") is not None
        assert InstanceIndexContract.add(store, sop="1.1.1.2") == "stored"

    def test_statement_timeout_is_unavailable(self, postgres_dsn):
        store = _store(postgres_dsn, statement_timeout=0.2)
        try:
            store.migrate()
            with pytest.raises(Unavailable), store.read() as cur:
                cur.execute("SELECT pg_sleep(2)")
            store.ping()  # the connection is still good
        finally:
            store.close()

    # --- settings ------------------------------------------------------------------------------
    def test_from_settings(self, postgres_dsn):
        settings = load_settings(overrides={"storage.index_backend": "postgresql",
                                            "storage.postgres_dsn": postgres_dsn,
                                            "storage.postgres_pool_max": 3,
                                            "storage.postgres_pool_timeout": 2.5}, environ={})
        store = PostgresIndexStore.from_settings(settings)
        try:
            assert (store.dsn, store.pool_max, store.pool_timeout) == (postgres_dsn, 3, 2.5)
            assert store.migrate()[0] == "0001_initial.sql"
        finally:
            store.close()
        assert settings.masked()["storage.postgres_dsn"] == "********"

    def test_settings_without_dsn_are_refused(self):
        with pytest.raises(ValueError, match="storage.postgres_dsn"):
            PostgresIndexStore.from_settings(load_settings(overrides={"storage.index_backend": "postgresql"},
                                                           environ={}))


class TestPostgresInstances(InstanceIndexContract, PostgresBackend):
    # --- concurrent writers (several gateway processes) -------------------------------------
    def test_the_same_instance_stored_concurrently_is_stored_once(self, store, postgres_dsn):
        others = [_store(postgres_dsn, pool_max=2).instances for _ in range(3)]
        writers = [store, *others] * 2
        barrier = threading.Barrier(len(writers))

        def add(writer):
            barrier.wait()
            return writer.add_instance(make_instance(), replace=False).outcome

        try:
            with ThreadPoolExecutor(len(writers)) as pool:
                outcomes = list(pool.map(add, writers))
        finally:
            for other in others:
                other.db.close()
        assert sorted(outcomes) == ["duplicate"] * (len(writers) - 1) + ["stored"]
        assert store.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}

    def test_concurrent_adds_to_one_new_study_keep_counters_true(self, store, postgres_dsn):
        others = [_store(postgres_dsn, pool_max=2).instances for _ in range(3)]
        writers = [store, *others]
        barrier = threading.Barrier(8)

        def add(i):
            barrier.wait()
            series = f"1.1.{i % 2 + 1}"
            batch = [make_instance(series=series, sop=f"{series}.{i}.{j}", Modality="CT" if i % 2 else "MR")
                     for j in range(3)]
            return [r.outcome for r in writers[i % len(writers)].add_instances(batch, replace=False)]

        try:
            with ThreadPoolExecutor(8) as pool:
                outcomes = [o for batch in pool.map(add, range(8)) for o in batch]
        finally:
            for other in others:
                other.db.close()
        assert outcomes == ["stored"] * 24
        row = self.study_row(store, "1.1")
        assert (row["num_series"], row["num_instances"]) == (2, 24)
        assert row["modalities"] == "\\CT\\MR\\"
        assert store.counts() == {"patients": 1, "studies": 1, "series": 2, "instances": 24}

    def test_delete_seen_by_another_store(self, store, postgres_dsn):
        backend = _store(postgres_dsn)
        other = backend.instances
        try:
            self.add(store)
            assert other.find_instance("c1", "1.1.1.1") is not None
            assert [r.sop_uid for r in other.delete("c1", "1.1")] == ["1.1.1.1"]
            assert store.find_instance("c1", "1.1.1.1") is None
            assert self.uids(store) == []
        finally:
            backend.close()

    # --- matching details of the dialect ------------------------------------------------------
    def test_like_specials_are_literal(self, store):
        self.add(store, study="2.1", series="2.1.1", sop="2.1.1.1", AccessionNumber="A%_1")
        self.add(store, study="2.2", series="2.2.1", sop="2.2.1.1", AccessionNumber="AB1", PatientName="Pe\\rcent")
        assert self.uids(store, "study", Match("AccessionNumber", "wildcard", "A%*")) == ["2.1"]
        assert self.uids(store, "study", Match("AccessionNumber", "wildcard", "A_?")) == []
        assert self.uids(store, "study", Match("AccessionNumber", "wildcard", "A??1")) == ["2.1"]
        assert sorted(self.uids(store, "study", Match("AccessionNumber", "wildcard", "A*1"))) == ["2.1", "2.2"]
        assert _like_pattern("a*b?c%d_e\\f") == "a%b_c\\%d\\_e\\\\f"

    # --- the query plans (the name-search trap: see _study_order) ----------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def big(cls, postgres_database):
        """10,000 synthetic studies of clinic c1 (rows only), analyzed: enough for PostgreSQL to
        choose plans as on a real clinic's database. Built once for the plan tests."""
        dsn = postgres_database.new_schema()
        backend = _store(dsn)
        backend.migrate()
        store = backend.instances
        with pg_connect(dsn) as conn:
            conn.execute("""
                INSERT INTO studies (clinic_id, study_uid, patient_id, patient_name, patient_name_alpha,
                                     study_date, study_time, accession_number, study_description, modalities,
                                     num_series, num_instances)
                SELECT 'c1', '9.' || g, 'P' || (g % 5000), name, lower(name),
                       to_char(date '2015-01-01' + (g % 3000), 'YYYYMMDD'), '120000', 'ACC' || g,
                       'Panoramic', '\\PX\\', 1, 1
                FROM generate_series(1, 10000) AS g,
                     LATERAL (SELECT (ARRAY['Smith', 'Jones', 'Garcia', 'Miller', 'Kim', 'Nguyen'])[1 + g % 6]
                                     || '^' || substr(md5(g::text), 1, 6) AS name) AS n""")
            conn.execute("ANALYZE studies")
        yield store
        backend.close()

    @staticmethod
    def explain(store, monkeypatch, *matches: Match) -> str:
        """The plan PostgreSQL picks for the store's own statement of a study search."""

        class Explaining:
            def __init__(self, cur):
                self.cur = cur

            def execute(self, statement, params=None):
                return self.cur.execute("EXPLAIN " + statement, params)

            def __getattr__(self, name):
                return getattr(self.cur, name)

        read = store.db.read

        @contextlib.contextmanager
        def explaining():
            with read() as cur:
                yield Explaining(cur)

        with monkeypatch.context() as m:
            m.setattr(store.db, "read", explaining)
            rows = store.search(Query(level="study", clinic_id="c1", matches=list(matches), limit=101)).rows
        return "\n".join(r["QUERY PLAN"] for r in rows)

    def test_plan_of_the_default_study_list_is_an_index_walk(self, big, monkeypatch):
        plan = self.explain(big, monkeypatch)
        assert "studies_by_date" in plan and "Sort" not in plan, plan
        plan = self.explain(big, monkeypatch, Match("StudyDate", "range", ("20200101", "20201231")))
        assert "studies_by_date" in plan and "Sort" not in plan, plan

    @pytest.mark.parametrize("match, index", [
        (Match("PatientName", "wildcard", "zzq*"), "studies_by_name"),
        (Match("PatientName", "wildcard", "*zzq*"), "_trgm"),
        (Match("PatientName", "fuzzy", "zzq"), "words_trgm"),
        (Match("PatientID", "wildcard", "*4999*"), "studies_patient_id_trgm"),
        (Match("AccessionNumber", "single", "ACC17"), "studies_by_accession"),
    ], ids=repr)
    def test_plan_of_a_name_search_uses_its_index_and_never_walks_the_date_index(self, big, monkeypatch,
                                                                                  match, index):
        plan = self.explain(big, monkeypatch, match)
        assert index in plan and "studies_by_date" not in plan, plan



class TestPostgresJobs(JobQueueContract, PostgresBackend):
    def test_claimers_on_separate_pools_never_hold_the_same_job(self, store, postgres_dsn):
        """As several worker processes do: each has its own connections (FOR UPDATE SKIP LOCKED)."""
        store.enqueue([Job("forward", f"1.{i}", "default", {}) for i in range(60)], now_ms=1000)
        others = [_store(postgres_dsn, pool_max=1) for _ in range(3)]
        barrier = threading.Barrier(4)

        def claim(args):
            owner, claimer = args
            got = []
            for _ in range(4):  # 4 × 7 a round: the queue is empty in the third
                barrier.wait()
                got.extend(j.id for j in claimer.claim(owner, kinds=["forward"], now_ms=1000, lease_ms=60_000,
                                                       limit=7))
            return got

        try:
            with ThreadPoolExecutor(4) as pool:
                claims = list(pool.map(claim, [("w0", store), *((f"w{i + 1}", o.jobs) for i, o in enumerate(others))]))
        finally:
            for other in others:
                other.close()
        ids = [i for got in claims for i in got]
        assert len(ids) == 60 and len(set(ids)) == 60
        assert all(claims)


class TestPostgresShares(ShareStoreContract, PostgresBackend):
    pass


class TestPostgresAudit(AuditLogContract, PostgresBackend):
    pass


class TestPostgresUploads(UploadStoreContract, PostgresBackend):
    pass


class TestPostgresDerived(DerivedStoreContract, PostgresBackend):
    pass


class TestPostgresUsers(UserStoreContract, PostgresBackend):
    pass


class TestPostgresProjects(ProjectStoreContract, PostgresBackend):
    pass


class TestPostgresAnnotations(AnnotationStoreContract, PostgresBackend):
    pass


class TestPostgresMasks(MaskStoreContract, PostgresBackend):
    pass


class TestPostgresQueryPlans(QueryPlanChecks, PostgresBackend):
    @staticmethod
    def analyze(backend) -> None:
        with backend.transaction() as cur:  # what autovacuum does after a bulk load
            cur.execute("ANALYZE studies")
