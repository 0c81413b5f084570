"""The DynamoDB metadata store (pynamodb) against the metadata contract, on the session's
moto_server spoken to over HTTP exactly as AWS; one fresh table per test."""
from __future__ import annotations

import pytest

from gateway.config import load_settings
from storage.errors import TooLarge, Unavailable
from storage.metadata import MetadataQuery
from storage.metadata.dynamodb import DynamoMetadataStore
from tests.contract.metadata import MetadataStoreContract, key, record
from tests.helpers import free_port

pytestmark = pytest.mark.dynamodb


def _store(moto_server, table: str | None = None) -> DynamoMetadataStore:
    settings = load_settings(overrides=moto_server.dynamodb_settings(table), environ={})
    return DynamoMetadataStore.from_settings(settings)


class DynamoMetadata:
    backend_class = DynamoMetadataStore

    @pytest.fixture
    def store(self, moto_server):
        store = _store(moto_server)
        assert store.create_table() is True
        yield store
        store.Item.delete_table()


class TestDynamoMetadata(MetadataStoreContract, DynamoMetadata):
    def test_create_table_is_idempotent(self, store):
        assert store.create_table() is False
        description = store.Item.describe_table()
        assert sorted(i["IndexName"] for i in description["GlobalSecondaryIndexes"]) == \
            ["by_date", "by_patient", "by_shared", "by_tag"]
        assert [k["AttributeName"] for k in description["KeySchema"]] == ["pk", "sk"]
        assert store.add_missing_indexes() == []

    def test_a_table_of_an_older_version_gets_the_shared_index(self, store):
        """A table made before by_shared existed: add_missing_indexes adds it (what
        ``gateway metadata-table create`` does for an existing table), and the shared-state
        search works on it."""
        client = store._connection.client
        client.update_table(TableName=store.table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by_shared"}}])
        assert "by_shared" not in {i["IndexName"] for i in store.Item.describe_table()["GlobalSecondaryIndexes"]}
        store.put(record(), expected_version=None)
        store.set_share("c1", "1.2", "1.2.3", {"targets": [{"share": "s", "type": "link", "permissions": ["view"],
                                                            "expiresAt": 5_000}]}, stamp=1)
        assert store.add_missing_indexes() == ["by_shared"]
        assert store.add_missing_indexes() == []
        found = store.search(MetadataQuery("c1", shared=True, now_ms=1_000))
        assert [r.key for r in found] == [key()]

    def test_items_keep_the_documented_keys(self, store):
        store.put(record(key("1.2.3.4", "1.2", "1.2.3"), tags=["implant"], patient_id="P1", study_date="20240506"),
                  expected_version=None)
        store.put(record(key("1.2.3.4", "1.2", "1.2.3"), tags=["implant"], patient_id="P1", study_date="20240506"),
                  expected_version=1)
        items = {i.sk: i for i in store.Item.query("c1#1.2")}
        assert set(items) == {"1.2.3#1.2.3.4#original", "~H#1.2.3#1.2.3.4#original#0000000001",
                              "~H#1.2.3#1.2.3.4#original#0000000002", "~T#implant#1.2.3#1.2.3.4#original"}
        record_item = items["1.2.3#1.2.3.4#original"]
        assert (record_item.version, record_item.gsi_clinic, record_item.gsi_patient, record_item.gsi_date) == \
            (2, "c1", "c1#P1", "20240506#1.2#1.2.3#1.2.3.4#original")

    def test_an_item_over_400_kb_is_refused(self, store):
        with pytest.raises(TooLarge):
            store.put(record(annotations=[{"text": "x" * 500_000}]), expected_version=None)
        assert store.get("c1", key()) is None

    def test_missing_table_and_unreachable_server_are_unavailable(self, moto_server):
        with pytest.raises(Unavailable, match="metadata-table create"):
            _store(moto_server, "no-such-table").ping()
        gone = DynamoMetadataStore("t", host=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s",
                                   attempts=1)
        for call in (gone.ping, lambda: gone.get("c1", key()), lambda: gone.put(record(), expected_version=None)):
            with pytest.raises(Unavailable):
                call()

    def test_settings_without_table_are_refused(self):
        settings = load_settings(overrides={"storage.metadata_backend": "dynamodb", "storage.dynamodb_table": ""},
                                 environ={})
        with pytest.raises(ValueError, match="storage.dynamodb_table"):
            DynamoMetadataStore.from_settings(settings)
