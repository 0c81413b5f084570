"""The contract every derived-object store (``backend.derived``) keeps."""
from __future__ import annotations

from storage.base import DerivedStore
from storage.records import DerivedObject
from tests.contract.backend import StoreContract


def make_derived(name: str = "preview", *, clinic: str = "c1", study: str = "1.1", series: str = "1.1.1",
                 version: str = "v1", info: dict | None = None) -> DerivedObject:
    return DerivedObject(clinic, study, series, name, version, f"derived/{clinic}/{series}/{version}/{name}",
                         "application/octet-stream", 123, info if info is not None else {"slices": [{"offset": 0}]},
                         created_at=1000)


class DerivedStoreContract(StoreContract):
    kind = "derived"
    protocol = DerivedStore

    def test_round_trip_with_info(self, store):
        obj = make_derived(info={"rows": 256, "slices": [{"position": [0.5, -1.0, 2.25]}], "name": "Ünïcode"})
        assert store.put([obj]) == []
        assert store.get("c1", "1.1.1", "preview") == obj
        assert store.get("c1", "1.1.1", "thumbnail/256.jpeg") is None
        assert store.get("c2", "1.1.1", "preview") is None  # clinic first

    def test_a_new_version_replaces_the_record_and_returns_the_old_one(self, store):
        old = make_derived(version="v1")
        store.put([old])
        new = make_derived(version="v2")
        assert store.put([new]) == [old]
        assert store.get("c1", "1.1.1", "preview") == new

    def test_for_series_lists_by_name_within_the_clinic(self, store):
        store.put([make_derived("thumbnail/512.png"), make_derived("preview"), make_derived("preview", series="1.1.2"),
                   make_derived("preview", clinic="c2")])
        assert [o.name for o in store.for_series("c1", "1.1.1")] == ["preview", "thumbnail/512.png"]
        assert store.for_series("c3", "1.1.1") == []

    def test_delete_by_study_series_and_names(self, store):
        store.put([make_derived("preview"), make_derived("thumbnail/256.jpeg"), make_derived("preview", series="1.1.2"),
                   make_derived("preview", study="2.2", series="2.2.1"), make_derived("preview", clinic="c2")])
        assert [o.name for o in store.delete("c1", "1.1", "1.1.1", names=["thumbnail/256.jpeg"])] == \
            ["thumbnail/256.jpeg"]
        assert store.delete("c1", "1.1", "1.1.1", names=[]) == []
        assert sorted(o.series_uid for o in store.delete("c1", "1.1")) == ["1.1.1", "1.1.2"]
        assert store.for_series("c1", "1.1.1") == []
        assert store.get("c1", "2.2.1", "preview") is not None and store.get("c2", "1.1.1", "preview") is not None
