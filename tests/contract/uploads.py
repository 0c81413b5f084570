"""The contract every upload store (``backend.uploads``) keeps."""
from __future__ import annotations

from storage.base import UploadStore
from storage.records import Upload, UploadEntry
from tests.contract.backend import StoreContract


def upload(upload_id: str = "u1", clinic: str = "c1", **kw) -> Upload:
    return Upload(id=upload_id, clinic_id=clinic, created_by="dr", created_at=1_000, expires_at=90_000,
                  updated_at=1_000, **kw)


def entry(name: str, part: int = 1, upload_id: str = "u1", **kw) -> UploadEntry:
    kw.setdefault("outcome", "stored")
    return UploadEntry(upload_id, part, name, kw.pop("size", 10), at=1_500, **kw)


class UploadStoreContract(StoreContract):
    kind = "uploads"
    protocol = UploadStore

    def test_create_and_get(self, store):
        made = upload(client="viewer 2.1", expected_study="1.2", expected_instances=3)
        store.create(made)
        assert store.get("u1") == made
        assert store.get("nope") is None

    def test_list_newest_first_per_clinic(self, store):
        store.create(upload("a"))
        store.create(Upload(id="b", clinic_id="c1", created_by="dr", created_at=2_000, expires_at=9, updated_at=2_000))
        store.create(upload("c", clinic="c2"))
        assert [u.id for u in store.list_uploads("c1")] == ["b", "a"]
        assert [u.id for u in store.list_uploads("c1", limit=1, offset=1)] == ["a"]
        assert [u.id for u in store.list_uploads("c2", status="complete")] == []

    def test_parts_count_and_move_the_expiry(self, store):
        store.create(upload())
        assert store.start_part("u1", now_ms=2_000, expires_at=50_000) == 1
        assert store.start_part("u1", now_ms=3_000, expires_at=60_000) == 2
        got = store.get("u1")
        assert (got.parts, got.expires_at, got.updated_at) == (2, 60_000, 3_000)
        assert store.start_part("nope", now_ms=3_000, expires_at=1) is None

    def test_entries_events_and_bytes_in_order(self, store):
        store.create(upload())
        store.record("u1", entries=[entry("a.dcm", sop_uid="1.1", sha256="ab" * 32, archive_offset=100),
                                    entry("notes.txt", outcome="skipped", reason="not DICOM")],
                     events=[("entry", {"name": "a.dcm"}), ("entry", {"name": "notes.txt"})], received=120,
                     now_ms=2_000)
        store.record("u1", entries=[entry("b.dcm", part=2, outcome="rejected", reason="bad", code=0xC000)],
                     events=[("part", {"part": 2})], received=30, now_ms=3_000)
        assert [(e.name, e.outcome, e.part) for e in store.entries("u1")] == [
            ("a.dcm", "stored", 1), ("notes.txt", "skipped", 1), ("b.dcm", "rejected", 2)]
        first = store.entries("u1")[0]
        assert (first.sop_uid, first.sha256, first.archive_offset, first.size) == ("1.1", "ab" * 32, 100, 10)
        assert store.get("u1").bytes_received == 150
        events = store.events("u1")
        assert [(e.type, e.data) for e in events] == [("entry", {"name": "a.dcm"}), ("entry", {"name": "notes.txt"}),
                                                      ("part", {"part": 2})]
        assert events[0].id < events[1].id < events[2].id and events[2].at == 3_000
        assert [e.type for e in store.events("u1", after_id=events[1].id)] == ["part"]
        assert len(store.events("u1", limit=2)) == 2

    def test_reject_entries_after_the_fact(self, store):
        store.create(upload())
        store.record("u1", entries=[entry("link.dcm", sop_uid="1.1"), entry("ok.dcm"), entry("link.dcm", part=2)],
                     now_ms=2_000)
        assert store.reject_entries("u1", 1, ["link.dcm"], reason="a symbolic link", code=0xC000) == 1
        assert [(e.name, e.part, e.outcome) for e in store.entries("u1")] == [
            ("link.dcm", 1, "rejected"), ("ok.dcm", 1, "stored"), ("link.dcm", 2, "stored")]
        assert store.reject_entries("u1", 1, [], reason="x", code=0) == 0

    def test_finish_once(self, store):
        store.create(upload())
        assert store.finish("u1", "complete", now_ms=5_000, events=[("complete", {"instances": 3})])
        assert not store.finish("u1", "expired", now_ms=6_000)
        done = store.get("u1")
        assert (done.status, done.completed_at) == ("complete", 5_000)
        assert [e.type for e in store.events("u1")] == ["complete"]
        assert store.start_part("u1", now_ms=7_000, expires_at=1) is None  # closed
        store.create(upload("u2"))
        assert store.finish("u2", "expired", now_ms=5_000)
        assert (store.get("u2").status, store.get("u2").completed_at) == ("expired", None)

    def test_events_of_one_upload_only(self, store):
        store.create(upload("u1"))
        store.create(upload("u2"))
        store.record("u1", events=[("entry", {"n": 1})], now_ms=2_000)
        store.record("u2", events=[("entry", {"n": 2})], now_ms=2_000)
        assert [e.data for e in store.events("u2")] == [{"n": 2}]
