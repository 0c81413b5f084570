"""The contracts of the fast API's relational stores: users (``backend.users``), projects
(``backend.projects``), annotations (``backend.annotations``) and masks (``backend.masks``)."""
from __future__ import annotations

import pytest

from storage.base import AnnotationStore, MaskStore, ProjectStore, UserStore
from storage.errors import Conflict, ObjectNotFound
from storage.records import (
    AnnotationRecord,
    MaskGroupRecord,
    MaskRecord,
    MaskUpload,
    ProjectRecord,
    UserRecord,
)
from tests.contract.backend import StoreContract


def make_annotation(annotation_id: str = "a1", clinic: str = "c1", study: str = "1.1", *, series: str | None = "1.1.1",
                    sop: str | None = None, user: str = "dr", type: str = "measurement", project: str | None = None,
                    created_at: int = 1_000, data=None) -> AnnotationRecord:
    return AnnotationRecord(id=annotation_id, clinic_id=clinic, user_id=user, study_uid=study, type=type,
                            series_uid=series, sop_uid=sop, project_id=project,
                            data={"points": [[1, 2], [3.5, 4]], "note": "한글"} if data is None else data,
                            measurements={"length_mm": 12.5}, software="viewer 2.1", created_at=created_at,
                            updated_at=created_at)


def make_group(group_id: str = "g1", annotation: str = "a1", clinic: str = "c1", created_at: int = 2_000
               ) -> MaskGroupRecord:
    return MaskGroupRecord(id=group_id, clinic_id=clinic, annotation_id=annotation, name="teeth",
                           model_name="segnet", model_version="1.4", modality="CT", slice_count=3,
                           description="auto", created_by="ai", created_at=created_at)


def make_upload(slice_index: int, label: str = "tooth", group: str = "g1", sha: str = "ab" * 32) -> MaskUpload:
    return MaskUpload(group_id=group, slice_index=slice_index, label=label, clinic_id="c1",
                      blob_key=f"mask/c1/a1/{group}/{slice_index:04d}_{label}.png", size=100, sha256=sha,
                      sop_uid=f"1.1.1.{slice_index}", expires_at=9_000, created_by="ai")


def make_mask(mask_id: str, slice_index: int, label: str = "tooth", group: str = "g1", sha: str = "ab" * 32,
              size: int = 100) -> MaskRecord:
    return MaskRecord(id=mask_id, group_id=group, clinic_id="c1", annotation_id="a1", slice_index=slice_index,
                      label=label, blob_key=f"mask/c1/a1/{group}/{slice_index:04d}_{label}.png", size=size,
                      sha256=sha, width=512, height=512, sop_uid=f"1.1.1.{slice_index}", created_by="ai",
                      created_at=3_000)


class UserStoreContract(StoreContract):
    kind = "users"
    protocol = UserStore

    def test_upsert_creates_then_updates_keeping_created_at(self, store):
        first = store.upsert_user(UserRecord("c1", "u1", username="kim", email="kim@x", name="Dr Kim",
                                             organization="Seoul Smile", department="ortho",
                                             roles=("doctor",), created_at=1_000, updated_at=1_000))
        assert first == UserRecord("c1", "u1", "kim", "kim@x", "Dr Kim", "Seoul Smile", "ortho", ("doctor",),
                                   1_000, 1_000)
        second = store.upsert_user(UserRecord("c1", "u1", username="kim2", email=None, name="Dr Kim",
                                              roles=("admin", "doctor"), created_at=5_000, updated_at=5_000))
        assert (second.username, second.email, second.organization) == ("kim2", None, None)
        assert second.roles == ("admin", "doctor")
        assert (second.created_at, second.updated_at) == (1_000, 5_000)
        assert store.get_user("c1", "u1") == second

    def test_users_are_per_clinic(self, store):
        store.upsert_user(UserRecord("c1", "u1", name="one", created_at=1, updated_at=1))
        store.upsert_user(UserRecord("c2", "u1", name="two", created_at=1, updated_at=1))
        assert store.get_user("c1", "u1").name == "one"
        assert store.get_user("c2", "u1").name == "two"
        assert store.get_user("c3", "u1") is None


class ProjectStoreContract(StoreContract):
    kind = "projects"
    protocol = ProjectStore

    def test_round_trip_list_and_update(self, store):
        store.add_project(ProjectRecord("p2", "c1", "Zeta", None, "dr", 1_000, 1_000))
        store.add_project(ProjectRecord("p1", "c1", "Alpha", "implants", "dr", 2_000, 2_000))
        store.add_project(ProjectRecord("p3", "c2", "Alpha", None, "dr", 3_000, 3_000))
        assert store.get_project("p1") == ProjectRecord("p1", "c1", "Alpha", "implants", "dr", 2_000, 2_000)
        assert store.get_project("nope") is None
        assert [p.id for p in store.list_projects("c1")] == ["p1", "p2"]  # by name
        assert [p.id for p in store.list_projects("c1", limit=1, offset=1)] == ["p2"]
        updated = store.update_project("p2", {"description": "ceph"}, now_ms=9_000)
        assert (updated.name, updated.description, updated.updated_at, updated.created_at) == \
            ("Zeta", "ceph", 9_000, 1_000)
        assert store.update_project("p2", {"name": "Beta"}, now_ms=9_500).name == "Beta"
        assert store.update_project("nope", {"name": "x"}, now_ms=1) is None

    def test_names_are_unique_per_clinic(self, store):
        store.add_project(ProjectRecord("p1", "c1", "Alpha", None, "dr", 1, 1))
        store.add_project(ProjectRecord("p2", "c1", "Beta", None, "dr", 1, 1))
        with pytest.raises(Conflict):
            store.add_project(ProjectRecord("p3", "c1", "Alpha", None, "dr", 1, 1))
        with pytest.raises(Conflict):
            store.update_project("p2", {"name": "Alpha"}, now_ms=2)
        assert store.get_project("p3") is None and store.get_project("p2").name == "Beta"
        assert store.update_project("p1", {"name": "Alpha"}, now_ms=3).name == "Alpha"  # its own name


class AnnotationStoreContract(StoreContract):
    kind = "annotations"
    protocol = AnnotationStore

    def test_round_trip_keeps_json(self, store, backend):
        backend.projects.add_project(ProjectRecord("p1", "c1", "Alpha", None, "dr", 1, 1))
        annotation = make_annotation(project="p1", sop="1.1.1.1")
        store.add_annotation(annotation)
        assert store.get_annotation("a1") == annotation
        assert store.get_annotation("nope") is None
        bare = make_annotation("a2", series=None, data={})
        bare.measurements = bare.software = None
        store.add_annotation(bare)
        assert store.get_annotation("a2") == bare

    def test_list_filters_newest_first(self, store):
        store.add_annotation(make_annotation("a1", created_at=1_000))
        store.add_annotation(make_annotation("a2", created_at=3_000, user="lee", type="segmentation"))
        store.add_annotation(make_annotation("a3", study="2.2", created_at=2_000, series="2.2.1"))
        store.add_annotation(make_annotation("a4", clinic="c2", created_at=4_000))
        ids = lambda **kw: [a.id for a in store.list_annotations("c1", **kw)]  # noqa: E731
        assert ids() == ["a2", "a3", "a1"]
        assert ids(study_uid="1.1") == ["a2", "a1"]
        assert ids(series_uid="2.2.1") == ["a3"]
        assert ids(user_id="lee") == ["a2"]
        assert ids(type="measurement") == ["a3", "a1"]
        assert ids(study_uid="1.1", type="measurement") == ["a1"]
        assert ids(limit=1, offset=1) == ["a3"]
        assert [a.id for a in store.list_annotations("c2")] == ["a4"]

    def test_list_by_project(self, store, backend):
        backend.projects.add_project(ProjectRecord("p1", "c1", "Alpha", None, "dr", 1, 1))
        store.add_annotation(make_annotation("a1", project="p1"))
        store.add_annotation(make_annotation("a2"))
        assert [a.id for a in store.list_annotations("c1", project_id="p1")] == ["a1"]

    def test_update_named_fields_only(self, store):
        store.add_annotation(make_annotation())
        updated = store.update_annotation("a1", {"data": {"points": []}, "type": "angle"}, now_ms=7_000)
        assert updated.data == {"points": []} and updated.type == "angle"
        assert updated.measurements == {"length_mm": 12.5} and updated.software == "viewer 2.1"
        assert (updated.created_at, updated.updated_at) == (1_000, 7_000)
        assert store.update_annotation("a1", {"measurements": None}, now_ms=8_000).measurements is None
        assert store.update_annotation("nope", {"type": "x"}, now_ms=1) is None

    def test_delete_cascades_to_groups_masks_and_uploads(self, store, backend):
        store.add_annotation(make_annotation())
        backend.masks.add_group(make_group())
        backend.masks.add_uploads([make_upload(0)])
        backend.masks.record_masks([make_mask("m1", 1)])
        assert store.delete_annotation("a1")
        assert not store.delete_annotation("a1")
        assert store.get_annotation("a1") is None
        assert backend.masks.get_group("g1") is None and backend.masks.get_mask("m1") is None
        assert backend.masks.uploads("g1") == []

    def test_delete_study_annotations(self, store, backend):
        store.add_annotation(make_annotation("a1"))
        store.add_annotation(make_annotation("a2", series="1.1.2", sop="1.1.2.5"))
        store.add_annotation(make_annotation("a3", study="2.2"))
        store.add_annotation(make_annotation("a4", clinic="c2"))
        backend.masks.add_group(make_group("g1", "a1"))
        assert [a.id for a in store.delete_study_annotations("c1", "1.1", "1.1.2", "1.1.2.9")] == []
        assert [a.id for a in store.delete_study_annotations("c1", "1.1", "1.1.2", "1.1.2.5")] == ["a2"]
        assert [a.id for a in store.delete_study_annotations("c1", "1.1")] == ["a1"]
        assert backend.masks.get_group("g1") is None
        assert [a.id for a in store.list_annotations("c1")] == ["a3"]
        assert [a.id for a in store.list_annotations("c2")] == ["a4"]


class MaskStoreContract(StoreContract):
    kind = "masks"
    protocol = MaskStore

    @pytest.fixture
    def annotated(self, backend):
        backend.annotations.add_annotation(make_annotation())
        return backend

    def test_groups(self, store, annotated):
        store.add_group(make_group("g2", created_at=3_000))
        store.add_group(make_group("g1", created_at=2_000))
        assert store.get_group("g1") == make_group("g1", created_at=2_000)
        assert [g.id for g in store.list_groups("a1")] == ["g1", "g2"]  # oldest first
        assert store.list_groups("a9") == []
        assert store.delete_group("g2") and not store.delete_group("g2")
        assert store.get_group("g2") is None

    def test_a_group_needs_its_annotation(self, store, annotated):
        with pytest.raises(ObjectNotFound):
            store.add_group(make_group("g1", annotation="a9"))
        assert store.get_group("g1") is None

    def test_uploads_are_replaced_by_slice_and_label(self, store, annotated):
        store.add_group(make_group())
        store.add_uploads([make_upload(1), make_upload(0), make_upload(0, "nerve")])
        store.add_uploads([make_upload(1, sha="cd" * 32)])
        pending = store.uploads("g1")
        assert [(u.slice_index, u.label) for u in pending] == [(0, "nerve"), (0, "tooth"), (1, "tooth")]
        assert pending[2].sha256 == "cd" * 32 and pending[0] == make_upload(0, "nerve")

    def test_record_masks_removes_uploads_and_updates_in_place(self, store, annotated):
        store.add_group(make_group())
        store.add_uploads([make_upload(0), make_upload(1)])
        stored = store.record_masks([make_mask("m1", 0), make_mask("m2", 1, size=120)])
        assert stored == [make_mask("m1", 0), make_mask("m2", 1, size=120)]
        assert store.uploads("g1") == []
        again = store.record_masks([make_mask("m9", 1, sha="ef" * 32, size=130)])  # a corrected upload
        assert [(m.id, m.sha256, m.size) for m in again] == [("m2", "ef" * 32, 130)]
        assert [m.id for m in store.list_masks("g1")] == ["m1", "m2"]
        assert store.get_mask("m2").size == 130 and store.get_mask("m9") is None

    def test_list_masks_by_slice_and_label(self, store, annotated):
        store.add_group(make_group())
        store.add_group(make_group("g2"))
        store.record_masks([make_mask("m3", 2), make_mask("m1", 0, "tooth"), make_mask("m2", 0, "nerve"),
                            make_mask("m4", 0, group="g2")])
        assert [m.id for m in store.list_masks("g1")] == ["m2", "m1", "m3"]
        assert [m.id for m in store.list_masks("g1", limit=2, offset=1)] == ["m1", "m3"]
        assert store.delete_group("g1")
        assert store.list_masks("g1") == [] and store.get_mask("m4").group_id == "g2"
