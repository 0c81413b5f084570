"""The SQLite index store against the index contract."""
from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.contract.index")

from storage.index.sqlite import SqliteIndexStore  # noqa: E402
from storage.base import AuditQuery  # noqa: E402
from tests.contract.index import IndexStoreContract, make_instance  # noqa: E402


class TestSqliteIndex(IndexStoreContract):
    backend_class = SqliteIndexStore

    @pytest.fixture
    def store(self, tmp_path):
        store = SqliteIndexStore(tmp_path / "i.sqlite3")
        applied = store.migrate()
        assert applied[0] == "0001_initial.sql" and applied == sorted(applied)
        yield store
        store.close()

    def test_survives_reopening(self, store, tmp_path):
        store.add_instance(make_instance(), replace=False)
        store.close()
        reopened = SqliteIndexStore(tmp_path / "i.sqlite3")
        try:
            assert reopened.migrate() == []
            assert reopened.find_instance("c1", "1.1.1.1") is not None
        finally:
            reopened.close()

    def test_from_settings_uses_data_dir(self, settings):
        store = SqliteIndexStore.from_settings(settings)
        assert store.path == str(settings.data_dir / "index.sqlite3")

    def test_audit_log_is_append_only(self, store):
        import sqlite3

        from storage.base import AuditRecord

        store.append_audit([AuditRecord(at=1, action="read", outcome="ok")])
        for statement in ("UPDATE audit_log SET outcome = 'denied'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                with store._transaction() as cur:
                    cur.execute(statement)
        assert [r.outcome for r in store.search_audit(AuditQuery())] == ["ok"]
