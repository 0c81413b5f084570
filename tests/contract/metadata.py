"""The contract every image metadata store (``gateway.metadata_stores``) keeps.

A backend's test module writes a fixture mixin (``backend_class`` and a ``store`` fixture
returning an empty store) and combines it: ``class TestSqliteMetadata(MetadataStoreContract,
SqliteMetadata)``. The meta-test (``test_entry_points.py``) fails for a backend without one.
"""
from __future__ import annotations

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.base import MetadataStore
from storage.errors import ObjectNotFound, VersionConflict
from storage.metadata import (
    DEFAULT_VIEWER_STATE,
    MetadataKey,
    MetadataQuery,
    MetadataRecord,
)
from tests.contract.backend import missing_methods


def key(sop: str = "1.2.3.4", study: str = "1.2", series: str = "1.2.3", variant: str = "original") -> MetadataKey:
    return MetadataKey(study, series, sop, variant)


def record(k: MetadataKey | None = None, clinic: str = "c1", **kw) -> MetadataRecord:
    kw.setdefault("owner", "dr")
    kw.setdefault("updated_by", "dr")
    kw.setdefault("updated_at", 1_000)
    kw.setdefault("created_at", 1_000)
    return MetadataRecord(clinic_id=clinic, key=k or key(), **kw)


def share(*expiries: int) -> dict:
    """A mirrored share state: one clinic target per expiry (ms)."""
    return {"targets": [{"share": f"s{n}", "type": "clinic", "id": f"lab{n}", "permissions": ["view"],
                         "expiresAt": expires} for n, expires in enumerate(expiries)]}


class MetadataStoreContract:
    backend_class: type

    def test_fixture_builds_the_declared_backend(self, store):
        assert type(store) is self.backend_class
        assert isinstance(store, MetadataStore)
        assert not missing_methods(store, MetadataStore)
        for name, member in vars(MetadataStore).items():
            if not name.startswith("_") and callable(member):
                assert list(inspect.signature(getattr(store, name)).parameters) == \
                    list(inspect.signature(member).parameters)[1:], name
        store.ping()

    # --- create, read, conditional writes -----------------------------------------------------
    def test_create_then_get(self, store):
        assert store.get("c1", key()) is None
        stored = store.put(record(tags=["implant", "molar"], patient_id="P1", study_date="20240506",
                                  object_type="CT", annotations=[{"id": "a1", "type": "line"}]),
                           expected_version=None)
        assert stored.version == 1
        got = store.get("c1", key())
        assert got == stored
        assert (got.tags, got.patient_id, got.object_type, got.annotations) == \
            (["implant", "molar"], "P1", "CT", [{"id": "a1", "type": "line"}])
        assert got.viewer_state == DEFAULT_VIEWER_STATE
        assert store.get("c2", key()) is None  # clinics are apart
        assert store.get("c1", key(variant="preview")) is None

    def test_create_twice_conflicts_with_the_current_record(self, store):
        store.put(record(tags=["first"]), expected_version=None)
        with pytest.raises(VersionConflict) as caught:
            store.put(record(tags=["second"]), expected_version=None)
        assert caught.value.current.version == 1 and caught.value.current.tags == ["first"]
        assert store.get("c1", key()).tags == ["first"]

    def test_update_needs_the_current_version(self, store):
        store.put(record(), expected_version=None)
        v2 = store.put(record(tags=["a"]), expected_version=1)
        assert v2.version == 2
        with pytest.raises(VersionConflict) as caught:
            store.put(record(tags=["stale"]), expected_version=1)
        assert caught.value.current.version == 2 and caught.value.current.tags == ["a"]
        with pytest.raises(VersionConflict) as missing:
            store.put(record(key(sop="9.9")), expected_version=3)
        assert missing.value.current is None
        assert store.get("c1", key()).tags == ["a"]

    def test_patch_viewer_state_merges(self, store):
        store.put(record(), expected_version=None)
        v2 = store.patch_viewer_state("c1", key(), {"zoom": 2.5, "window": {"center": 400, "width": 2000}},
                                      expected_version=1, updated_by="staff", now_ms=2_000)
        assert v2.version == 2 and v2.updated_by == "staff" and v2.updated_at == 2_000
        v3 = store.patch_viewer_state("c1", key(), {"window": {"width": 1500}, "rotation": 90},
                                      expected_version=2, updated_by="dr", now_ms=3_000)
        assert v3.viewer_state["window"] == {"center": 400, "width": 1500}
        assert (v3.viewer_state["zoom"], v3.viewer_state["rotation"]) == (2.5, 90)
        v4 = store.patch_viewer_state("c1", key(), {"zoom": None}, expected_version=3, updated_by="dr", now_ms=4)
        assert v4.viewer_state["zoom"] == DEFAULT_VIEWER_STATE["zoom"]
        assert store.get("c1", key()) == v4

    def test_patch_of_a_stale_or_missing_record(self, store):
        store.put(record(), expected_version=None)
        store.patch_viewer_state("c1", key(), {"zoom": 2}, expected_version=1, updated_by="a", now_ms=2)
        with pytest.raises(VersionConflict) as caught:
            store.patch_viewer_state("c1", key(), {"zoom": 3}, expected_version=1, updated_by="b", now_ms=3)
        assert caught.value.current.version == 2 and caught.value.current.viewer_state["zoom"] == 2
        with pytest.raises(ObjectNotFound):
            store.patch_viewer_state("c1", key(sop="9.9"), {"zoom": 3}, expected_version=1, updated_by="b", now_ms=3)

    def test_concurrent_writers_of_one_version_one_wins(self, store):
        store.put(record(), expected_version=None)
        barrier = threading.Barrier(8)

        def write(n: int):
            barrier.wait()
            try:
                return store.patch_viewer_state("c1", key(), {"rotation": n}, expected_version=1,
                                                updated_by=f"u{n}", now_ms=10 + n).viewer_state["rotation"]
            except VersionConflict:
                return None

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(write, range(8)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        current = store.get("c1", key())
        assert current.version == 2 and current.viewer_state["rotation"] == winners[0]

    # --- history ----------------------------------------------------------------------------------
    def test_history_keeps_every_version(self, store):
        store.put(record(tags=["v1"]), expected_version=None)
        store.put(record(tags=["v2"]), expected_version=1)
        store.patch_viewer_state("c1", key(), {"zoom": 3}, expected_version=2, updated_by="x", now_ms=5)
        versions = store.history("c1", key())
        assert [v.version for v in versions] == [3, 2, 1]
        assert [v.tags for v in versions] == [["v2"], ["v2"], ["v1"]]
        assert versions[0] == store.get("c1", key())
        assert [v.version for v in store.history("c1", key(), limit=1, before_version=3)] == [2]
        assert store.history("c2", key()) == []

    # --- search -----------------------------------------------------------------------------------
    @staticmethod
    def _fill(store):
        rows = [("1.1", "1.1.1", "1.1.1.1", "original", "P1", "20240101", ["implant"]),
                ("1.1", "1.1.1", "1.1.1.1", "preview", "P1", "20240101", []),
                ("1.1", "1.1.2", "1.1.2.1", "original", "P1", "20240101", ["caries", "implant"]),
                ("1.2", "1.2.1", "1.2.1.1", "original", "P2", "20240301", ["caries"]),
                ("1.3", "1.3.1", "1.3.1.1", "mini-ct", "P1", "20250101", []),
                ("1.4", "1.4.1", "1.4.1.1", "original", None, None, ["implant"])]
        for study, series, sop, variant, patient, date, tags in rows:
            store.put(record(key(sop, study, series, variant), patient_id=patient, study_date=date, tags=tags),
                      expected_version=None)
        store.put(record(key("1.1.1.1", "1.1", "1.1.1"), clinic="c2", patient_id="P1", study_date="20240101",
                         tags=["implant"]), expected_version=None)

    @staticmethod
    def _keys(store, **filters) -> list[str]:
        return [r.key.object_key for r in store.search(MetadataQuery(clinic_id="c1", **filters))]

    def test_search_order_and_paging(self, store):
        self._fill(store)
        everything = self._keys(store)
        assert everything == ["1.3/1.3.1/1.3.1.1/mini-ct", "1.2/1.2.1/1.2.1.1/original",
                              "1.1/1.1.2/1.1.2.1/original", "1.1/1.1.1/1.1.1.1/preview",
                              "1.1/1.1.1/1.1.1.1/original", "1.4/1.4.1/1.4.1.1/original"]
        assert self._keys(store, limit=2, offset=1) == everything[1:3]
        assert self._keys(store, offset=10) == []

    def test_search_filters(self, store):
        self._fill(store)
        assert self._keys(store, study_uid="1.1", series_uid="1.1.1") == \
            ["1.1/1.1.1/1.1.1.1/preview", "1.1/1.1.1/1.1.1.1/original"]
        assert self._keys(store, patient_id="P1", date_from="20240101", date_to="20241231") == \
            ["1.1/1.1.2/1.1.2.1/original", "1.1/1.1.1/1.1.1.1/preview", "1.1/1.1.1/1.1.1.1/original"]
        assert self._keys(store, date_from="20240201") == ["1.3/1.3.1/1.3.1.1/mini-ct", "1.2/1.2.1/1.2.1.1/original"]
        assert self._keys(store, tag="implant") == ["1.1/1.1.2/1.1.2.1/original", "1.1/1.1.1/1.1.1.1/original",
                                                    "1.4/1.4.1/1.4.1.1/original"]
        assert self._keys(store, tag="caries", patient_id="P2") == ["1.2/1.2.1/1.2.1.1/original"]
        assert self._keys(store, tag="nothing") == []

    def test_tags_follow_updates(self, store):
        store.put(record(tags=["a", "b"]), expected_version=None)
        store.put(record(tags=["b", "c"]), expected_version=1)
        assert self._keys(store, tag="a") == []
        assert self._keys(store, tag="c") == [key().object_key]

    # --- the mirrored share state ------------------------------------------------------------------
    def test_set_share_mirrors_without_a_version_and_record_writes_keep_it(self, store):
        self._fill(store)
        assert store.set_share("c1", "1.1", "1.1.1", share(5_000), stamp=10) == 2  # both variants
        k = key("1.1.1.1", "1.1", "1.1.1")
        got = store.get("c1", k)
        assert (got.share, got.share_stamp, got.shared_until, got.version) == (share(5_000), 10, 5_000, 1)
        assert store.get("c1", key("1.1.1.1", "1.1", "1.1.1", "preview")).share == share(5_000)
        assert store.get("c1", key("1.1.2.1", "1.1", "1.1.2")).share is None  # another series of the study
        assert store.get("c2", k).share is None  # another clinic's
        assert [v.version for v in store.history("c1", k)] == [1]  # no version of its own
        # a client's write (made from a record without the share) leaves the mirrored share
        store.put(record(k, tags=["client"]), expected_version=1)
        store.patch_viewer_state("c1", k, {"zoom": 2}, expected_version=2, updated_by="dr", now_ms=2)
        got = store.get("c1", k)
        assert (got.version, got.tags, got.share) == (3, ["client"], share(5_000))
        # an older mirror write loses to a later one; a newer one clears it
        assert store.set_share("c1", "1.1", "1.1.1", share(9_000), stamp=9) == 0
        assert store.get("c1", k).share == share(5_000)
        assert store.set_share("c1", "1.1", "1.1.1", None, stamp=11) == 2
        got = store.get("c1", k)
        assert (got.share, got.shared_until, got.version) == (None, None, 3)
        assert store.set_share("c1", "1.1", "9.9", share(5_000), stamp=12) == 0  # a series without records
        assert store.set_share("c1", "1.1", "1.1.1", share(5_000), stamp=13) == 2
        store.delete_records("c1", "1.1", "1.1.1")
        assert store.set_share("c1", "1.1", "1.1.1", share(6_000), stamp=14) == 0  # never brings a record back
        assert store.get("c1", k) is None

    def test_search_by_shared_state_at_a_time(self, store):
        self._fill(store)
        store.set_share("c1", "1.2", "1.2.1", share(5_000), stamp=1)
        store.set_share("c1", "1.3", "1.3.1", share(1_500, 800), stamp=1)
        store.set_share("c2", "1.1", "1.1.1", share(5_000), stamp=1)  # another clinic's
        assert self._keys(store, shared=True, now_ms=1_000) == ["1.3/1.3.1/1.3.1.1/mini-ct",
                                                                "1.2/1.2.1/1.2.1.1/original"]
        assert self._keys(store, shared=True, now_ms=2_000) == ["1.2/1.2.1/1.2.1.1/original"]  # 1.3 expired
        assert self._keys(store, shared=False, now_ms=2_000) == [
            "1.3/1.3.1/1.3.1.1/mini-ct", "1.1/1.1.2/1.1.2.1/original", "1.1/1.1.1/1.1.1.1/preview",
            "1.1/1.1.1/1.1.1.1/original", "1.4/1.4.1/1.4.1.1/original"]
        assert self._keys(store, shared=True, now_ms=1_000, date_to="20241231") == ["1.2/1.2.1/1.2.1.1/original"]
        assert self._keys(store, shared=True, now_ms=1_000, tag="caries") == ["1.2/1.2.1/1.2.1.1/original"]
        assert self._keys(store, shared=True, now_ms=1_000, patient_id="P1") == ["1.3/1.3.1/1.3.1.1/mini-ct"]
        assert self._keys(store, shared=True, now_ms=1_000, study_uid="1.2") == ["1.2/1.2.1/1.2.1.1/original"]
        assert self._keys(store, shared=True, now_ms=1_000, limit=1, offset=1) == ["1.2/1.2.1/1.2.1.1/original"]
        store.set_share("c1", "1.2", "1.2.1", None, stamp=2)  # revoked
        assert self._keys(store, shared=True, now_ms=1_000) == ["1.3/1.3.1/1.3.1.1/mini-ct"]

    def test_mirror_writes_and_client_writes_lose_nothing(self, store):
        """Concurrent record writes (retrying on conflict) and mirror writes (later stamps): every
        record write is applied once, and the share is the latest mirror write's."""
        store.put(record(), expected_version=None)
        barrier = threading.Barrier(12)

        def edit(n: int) -> None:
            barrier.wait()
            while True:
                current = store.get("c1", key())
                try:
                    store.patch_viewer_state("c1", key(), {"pan": {"x": n}}, expected_version=current.version,
                                             updated_by=f"u{n}", now_ms=10 + n)
                    return
                except VersionConflict:
                    continue

        def mirror(n: int) -> None:
            barrier.wait()
            store.set_share("c1", "1.2", "1.2.3", share(10_000 + n), stamp=100 + n)

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda n: edit(n) if n < 6 else mirror(n), range(12)))
        current = store.get("c1", key())
        assert current.version == 7
        assert sorted(v.viewer_state["pan"]["x"] for v in store.history("c1", key()) if v.version > 1) == \
            list(range(6))
        assert (current.share, current.share_stamp) == (share(10_011), 111)

    # --- restore (migrations between stores) ------------------------------------------------------
    def test_restore_copies_versions_history_and_share(self, store):
        k = key()
        versions = [record(k, tags=["a"], version=1, updated_at=1_000),
                    record(k, tags=["a", "b"], version=2, updated_at=2_000, updated_by="staff"),
                    record(k, tags=["b"], version=3, updated_at=3_000, patient_id="P1", study_date="20240506",
                           share=share(9_000), share_stamp=7)]
        assert store.restore(versions) == "copied"
        got = store.get("c1", k)
        assert got == versions[-1]
        assert [(v.version, v.tags, v.updated_by) for v in store.history("c1", k)] == \
            [(3, ["b"], "dr"), (2, ["a", "b"], "staff"), (1, ["a"], "dr")]
        assert self._keys(store, tag="b") == [k.object_key] and self._keys(store, tag="a") == []
        assert self._keys(store, shared=True, now_ms=1) == [k.object_key]
        # again: nothing changes
        assert store.restore(versions) == "already there"
        assert store.get("c1", k) == versions[-1] and len(store.history("c1", k)) == 3
        # the source moved on: the versions the store lacks are added
        v4 = record(k, tags=["c"], version=4, updated_at=4_000, share=None, share_stamp=8)
        assert store.restore([*versions, v4]) == "updated"
        assert store.get("c1", k) == v4
        assert [v.version for v in store.history("c1", k)] == [4, 3, 2, 1]
        assert self._keys(store, tag="c") == [k.object_key] and self._keys(store, tag="b") == []
        assert self._keys(store, shared=True, now_ms=1) == []
        # the store's record is the next version after all: it is patched like any other
        assert store.patch_viewer_state("c1", k, {"zoom": 2}, expected_version=4, updated_by="x",
                                        now_ms=5).version == 5

    def test_restore_never_overwrites_a_newer_or_another_record(self, store):
        k = key()
        store.put(record(k, tags=["target"]), expected_version=None)
        store.put(record(k, tags=["target", "newer"]), expected_version=1)
        with pytest.raises(VersionConflict) as newer:
            store.restore([record(k, tags=["source"], version=1)])
        assert newer.value.current.version == 2
        with pytest.raises(VersionConflict):
            store.restore([record(k, tags=["source"], version=1), record(k, tags=["other"], version=2)])
        got = store.get("c1", k)
        assert (got.version, got.tags) == (2, ["target", "newer"])
        assert [v.tags for v in store.history("c1", k)] == [["target", "newer"], ["target"]]

    # --- delete -------------------------------------------------------------------------------------
    def test_delete_a_study(self, store):
        self._fill(store)
        store.put(record(key("1.1.1.1", "1.1", "1.1.1"), tags=["x"]), expected_version=1)
        assert store.delete_records("c1", "1.1") == 3
        assert store.get("c1", key("1.1.1.1", "1.1", "1.1.1")) is None
        assert store.history("c1", key("1.1.1.1", "1.1", "1.1.1")) == []
        assert self._keys(store, tag="x") == []
        assert store.get("c2", key("1.1.1.1", "1.1", "1.1.1")) is not None  # the other clinic's stays
        assert store.delete_records("c1", "1.1") == 0
        # a record made again after a delete starts from version 1
        assert store.put(record(key("1.1.1.1", "1.1", "1.1.1")), expected_version=None).version == 1
        assert [v.version for v in store.history("c1", key("1.1.1.1", "1.1", "1.1.1"))] == [1]

    def test_delete_a_series_or_an_instance(self, store):
        self._fill(store)
        store.put(record(key("1.1.1.1", "1.1", "1.1.1"), tags=["implant", "x"]), expected_version=1)
        store.put(record(key("1.1.1.2", "1.1", "1.1.1"), tags=["implant"]), expected_version=None)
        # series 1.1.1 (1.1.1.1 in two variants, 1.1.1.2) and 1.1.2 (1.1.2.1) of study 1.1
        assert store.delete_records("c1", "1.1", "1.1.1", "1.1.1.1") == 2  # the instance: every variant
        for variant in ("original", "preview"):
            gone = key("1.1.1.1", "1.1", "1.1.1", variant)
            assert store.get("c1", gone) is None and store.history("c1", gone) == []
        assert self._keys(store, tag="x") == []
        assert self._keys(store, tag="implant") == ["1.1/1.1.2/1.1.2.1/original", "1.4/1.4.1/1.4.1.1/original",
                                                    "1.1/1.1.1/1.1.1.2/original"]
        assert [v.version for v in store.history("c1", key("1.1.1.2", "1.1", "1.1.1"))] == [1]
        assert store.get("c2", key("1.1.1.1", "1.1", "1.1.1")) is not None  # the other clinic's stays
        assert store.delete_records("c1", "1.1", "1.1.1", "1.1.1.1") == 0

        store.put(record(key("1.1.10.1", "1.1", "1.1.10")), expected_version=None)  # 1.1.1 is a prefix of it
        assert store.delete_records("c1", "1.1", "1.1.1") == 1  # the series: 1.1.1.2
        assert store.get("c1", key("1.1.1.2", "1.1", "1.1.1")) is None
        assert store.history("c1", key("1.1.1.2", "1.1", "1.1.1")) == []
        assert self._keys(store, study_uid="1.1") == ["1.1/1.1.2/1.1.2.1/original", "1.1/1.1.10/1.1.10.1/original"]
        assert self._keys(store, tag="implant") == ["1.1/1.1.2/1.1.2.1/original", "1.4/1.4.1/1.4.1.1/original"]
        assert [v.version for v in store.history("c1", key("1.1.2.1", "1.1", "1.1.2"))] == [1]
        with pytest.raises(ValueError, match="series_uid"):
            store.delete_records("c1", "1.1", None, "1.1.2.1")
