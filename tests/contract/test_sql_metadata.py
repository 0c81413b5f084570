"""The SQL metadata store (in the index database) against the metadata contract, on SQLite and
PostgreSQL."""
from __future__ import annotations

import pytest

from gateway.config import load_settings
from storage.index.metadata import SqlMetadataStore
from storage.index.postgres import PostgresIndexStore
from storage.index.sqlite import SqliteIndexStore
from tests.contract.metadata import MetadataStoreContract


class SqliteMetadata:
    backend_class = SqlMetadataStore

    @pytest.fixture
    def store(self, tmp_path):
        database = SqliteIndexStore(tmp_path / "i.sqlite3")
        database.migrate()
        yield SqlMetadataStore(database)
        database.close()


class PostgresMetadata:
    backend_class = SqlMetadataStore

    @pytest.fixture
    def store(self, postgres_dsn):
        database = PostgresIndexStore(postgres_dsn, pool_max=10)
        database.migrate()
        yield SqlMetadataStore(database)
        database.close()


class TestSqliteMetadata(MetadataStoreContract, SqliteMetadata):
    def test_from_settings_uses_the_index_database(self, tmp_path):
        settings = load_settings(overrides={"storage.data_dir": str(tmp_path)}, environ={})
        database = SqliteIndexStore(tmp_path / "i.sqlite3")
        assert SqlMetadataStore.from_settings(settings, index=database).db is database
        with pytest.raises(ValueError, match="must be SQL"):
            SqlMetadataStore.from_settings(settings, index=object())


@pytest.mark.postgres
class TestPostgresMetadata(MetadataStoreContract, PostgresMetadata):
    pass
