"""The contract every instance index keeps (fsspec style).

An index backend's test module combines :class:`InstanceIndexContract` with the backend's
fixture mixin (``backend_class`` and a ``backend`` fixture returning a migrated, empty
backend, see :mod:`tests.contract.backend`)::

    class TestSqliteInstances(InstanceIndexContract, SqliteBackend):
        pass

Instances are built from small pydicom datasets through the same functions
ingest uses (:func:`gateway.headers.index_attributes` and
:func:`gateway.headers.header_json`), so the column values are those a real
store receives.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

import pytest
from pydicom.dataset import Dataset

from gateway import headers
from storage.attributes import BY_KEYWORD
from storage.base import InstanceIndex
from storage.records import InstanceRecord, NewInstance
from tests.contract.backend import StoreContract
from storage.errors import Conflict
from storage.query import Match, Query, SharedScope

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
KOREAN = "Hong^Gildong=洪^吉洞=홍^길동"


def make_instance(clinic: str = "c1", study: str = "1.1", series: str = "1.1.1", sop: str = "1.1.1.1",
                  *, content: str = "v1", **attributes: Any) -> NewInstance:
    """A :class:`NewInstance` as ingest builds it, from DICOM keywords and values.

    ``content`` stands for the file's bytes: the same content gives the same sha256.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = attributes.pop("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID = attributes.pop("SOPClassUID", CT)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    attributes.setdefault("Modality", "CT")
    attributes.setdefault("PatientID", "P1")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    sha = hashlib.sha256(f"{clinic}/{sop}/{content}".encode()).hexdigest()
    values = headers.index_attributes(ds)
    body = headers.header_json(ds, study_uid=study, series_uid=series, sop_uid=sop, has_pixel_data=False)
    record = InstanceRecord(
        clinic_id=clinic, study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax=EXPLICIT_LE, blob_key=f"dicom/{clinic}/{study}/{series}/{sop}/{sha[:16]}.dcm",
        size=1000 + len(content), sha256=sha, number_of_frames=values.get("number_of_frames"),
        instance_number=values.get("instance_number"), rows=values.get("rows"), columns=values.get("columns"),
        crc32=zlib.crc32(sha.encode()),
    )
    return NewInstance(record, values, headers.dumps(body), headers.dumps(headers.level_subset(body, "study")),
                       headers.dumps(headers.level_subset(body, "series")))


def col(keyword: str) -> str:
    """The row key of an indexed attribute."""
    return BY_KEYWORD[keyword].column


def modalities(row: dict[str, Any]) -> set[str]:
    return {m for m in (row[col("ModalitiesInStudy")] or "").split("\\") if m}


# The search fixture: four studies of clinic c1, added in an order that differs from
# the expected study-list order (S1, S2, S3, S4).
S1, S2, S3, S4 = "1.1", "1.2", "1.3", "1.4"
SEARCH_DATA: list[dict[str, Any]] = [
    # S4: no StudyDate, added first so that insertion order cannot explain "last".
    dict(study=S4, series="1.4.1", sop="1.4.1.1", PatientID="P4", PatientName="Smith^Anna",
         AccessionNumber="ACC-4", Modality="PX", SeriesNumber=1, InstanceNumber=1),
    dict(study=S2, series="1.2.1", sop="1.2.1.1", PatientID="P2", PatientName="Doe^John^Q",
         StudyDate="20230115", StudyTime="101500", AccessionNumber="ACC-2", Modality="CT", SeriesNumber=1,
         InstanceNumber=1, PatientBirthDate="19800101", PatientSex="M"),
    dict(study=S2, series="1.2.1", sop="1.2.1.2", PatientID="P2", PatientName="Doe^John^Q",
         StudyDate="20230115", StudyTime="101500", AccessionNumber="ACC-2", Modality="CT", SeriesNumber=1,
         InstanceNumber=2),
    dict(study=S2, series="1.2.2", sop="1.2.2.1", PatientID="P2", PatientName="Doe^John^Q",
         StudyDate="20230115", StudyTime="101500", AccessionNumber="ACC-2", Modality="MR", SeriesNumber=2,
         InstanceNumber=1),
    dict(study=S3, series="1.3.1", sop="1.3.1.1", PatientID="P3", PatientName="Müller^Jürgen",
         StudyDate="20230115", StudyTime="080000.5", AccessionNumber="A[1]", Modality="CT", SeriesNumber=1,
         InstanceNumber=1),
    # S1: series number 2 is added before series number 1, instances out of order.
    dict(study=S1, series="1.1.2", sop="1.1.2.3", SpecificCharacterSet=["", "ISO 2022 IR 149"],
         PatientID="P1", PatientName=KOREAN, ReferringPhysicianName="Kim^Doctor", StudyDate="20240301",
         StudyTime="143000", AccessionNumber="ACC-1", StudyDescription="Panoramic", Modality="IO",
         SeriesNumber=2, InstanceNumber=3, Rows=512, Columns=256),
    dict(study=S1, series="1.1.2", sop="1.1.2.1", PatientID="P1", PatientName=KOREAN, StudyDate="20240301",
         StudyTime="143000", Modality="IO", SeriesNumber=2, InstanceNumber=1, Rows=256, Columns=256),
    dict(study=S1, series="1.1.2", sop="1.1.2.2", PatientID="P1", PatientName=KOREAN, StudyDate="20240301",
         StudyTime="143000", Modality="IO", SeriesNumber=2, InstanceNumber=2, Rows=512, Columns=256),
    dict(study=S1, series="1.1.1", sop="1.1.1.1", PatientID="P1", PatientName=KOREAN, StudyDate="20240301",
         StudyTime="143000", Modality="PX", SeriesNumber=1, InstanceNumber=1, Rows=1024, Columns=2048),
]


class InstanceIndexContract(StoreContract):
    """Behaviour every instance index (``backend.instances``) must show."""

    kind = "instances"
    protocol = InstanceIndex

    # --- helpers -----------------------------------------------------------------------
    @staticmethod
    def add(store, **kw) -> str:
        replace = kw.pop("replace", False)
        return store.add_instance(make_instance(**kw), replace=replace).outcome

    @staticmethod
    def rows(store, level: str = "study", *matches: Match, clinic: str = "c1", **kw) -> list[dict]:
        return store.search(Query(level=level, clinic_id=clinic, matches=list(matches), **kw)).rows

    def uids(self, store, level: str = "study", *matches: Match, clinic: str = "c1", **kw) -> list[str]:
        key = {"study": "study_uid", "series": "series_uid", "instance": "sop_uid"}[level]
        return [r[key] for r in self.rows(store, level, *matches, clinic=clinic, **kw)]

    def study_row(self, store, uid: str, clinic: str = "c1") -> dict | None:
        found = self.rows(store, "study", Match("StudyInstanceUID", "single", uid), clinic=clinic)
        assert len(found) <= 1
        return found[0] if found else None

    def series_row(self, store, uid: str, clinic: str = "c1") -> dict | None:
        found = self.rows(store, "series", Match("SeriesInstanceUID", "single", uid), clinic=clinic)
        assert len(found) <= 1
        return found[0] if found else None

    @pytest.fixture
    def seeded(self, store):
        for item in SEARCH_DATA:
            assert self.add(store, **dict(item)) == "stored"
        return store

    # --- the store itself ----------------------------------------------------------------
    def test_empty(self, store):
        assert store.counts() == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
        assert store.clinic_ids() == []

    # --- add_instance outcomes -----------------------------------------------------------------
    def test_add_stored_then_duplicate(self, store):
        new = make_instance()
        result = store.add_instance(new, replace=False)
        assert result.outcome == "stored" and result.existing is None
        assert store.find_instance("c1", "1.1.1.1") == new.record

        again = store.add_instance(make_instance(), replace=False)
        assert again.outcome == "duplicate"
        assert again.existing == new.record
        assert store.add_instance(make_instance(), replace=True).outcome == "duplicate"
        assert store.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}

    def test_add_other_bytes_is_a_conflict_without_replace(self, store):
        old = make_instance(content="v1")
        store.add_instance(old, replace=False)
        result = store.add_instance(make_instance(content="v2"), replace=False)
        assert result.outcome == "conflict"
        assert result.existing == old.record
        assert store.find_instance("c1", "1.1.1.1").sha256 == old.record.sha256
        assert store.counts()["instances"] == 1

    def test_add_other_bytes_with_replace(self, store):
        old = make_instance(content="v1")
        store.add_instance(old, replace=False)
        new = make_instance(content="v2")
        result = store.add_instance(new, replace=True)
        assert result.outcome == "replaced"
        assert result.existing == old.record
        assert store.find_instance("c1", "1.1.1.1") == new.record
        assert self.study_row(store, "1.1")[col("NumberOfStudyRelatedInstances")] == 1
        assert self.series_row(store, "1.1.1")[col("NumberOfSeriesRelatedInstances")] == 1
        assert store.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}

    def test_replace_moving_the_instance_drops_the_emptied_series_and_study(self, store):
        self.add(store, study="1.1", series="1.1.1", sop="9.9", Modality="CT")
        result = store.add_instance(
            make_instance(study="1.2", series="1.2.1", sop="9.9", content="v2", Modality="MR"), replace=True)
        assert result.outcome == "replaced"
        assert self.study_row(store, "1.1") is None
        assert self.series_row(store, "1.1.1") is None
        row = self.study_row(store, "1.2")
        assert row[col("NumberOfStudyRelatedSeries")] == 1
        assert row[col("NumberOfStudyRelatedInstances")] == 1
        assert modalities(row) == {"MR"}
        assert store.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}

    def test_find_instance_missing(self, store):
        assert store.find_instance("c1", "1.2.3") is None

    def test_series_under_another_study_is_a_conflict(self, store):
        self.add(store, study="1.1", series="1.1.1", sop="1.1.1.1")
        with pytest.raises(Conflict):
            store.add_instance(make_instance(study="1.9", series="1.1.1", sop="1.9.1.1"), replace=False)
        # Nothing of the refused instance remains (one transaction).
        assert self.study_row(store, "1.9") is None
        assert store.find_instance("c1", "1.9.1.1") is None
        assert store.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}

    # --- add_instances (one transaction for several) ----------------------------------------------
    def test_add_instances_empty(self, store):
        assert store.add_instances([], replace=False) == []

    def test_add_instances_outcomes_in_order(self, store):
        self.add(store, sop="1.1.1.1", content="v1")
        self.add(store, sop="1.1.1.2", content="v1")
        batch = [
            make_instance(sop="1.1.1.1", content="v1"),  # duplicate
            make_instance(sop="1.1.1.2", content="v2"),  # conflict
            make_instance(sop="1.1.1.3"),  # stored
            make_instance(series="1.1.2", sop="1.1.2.1", Modality="MR"),  # stored, new series
            make_instance(series="1.1.2", sop="1.1.2.1", Modality="MR"),  # same bytes again in the batch
        ]
        results = store.add_instances(batch, replace=False)
        assert [r.outcome for r in results] == ["duplicate", "conflict", "stored", "stored", "duplicate"]
        assert results[1].existing.sha256 == make_instance(sop="1.1.1.2", content="v1").record.sha256
        row = self.study_row(store, "1.1")
        assert (row[col("NumberOfStudyRelatedSeries")], row[col("NumberOfStudyRelatedInstances")]) == (2, 4)
        assert modalities(row) == {"CT", "MR"}

    def test_add_instances_with_replace(self, store):
        self.add(store, sop="1.1.1.1", content="v1")
        results = store.add_instances([make_instance(sop="1.1.1.1", content="v2"), make_instance(sop="1.1.1.2")],
                                      replace=True)
        assert [r.outcome for r in results] == ["replaced", "stored"]
        assert store.find_instance("c1", "1.1.1.1").sha256 == make_instance(content="v2").record.sha256
        assert store.counts()["instances"] == 2

    def test_add_instances_keeps_the_others_when_one_conflicts(self, store):
        self.add(store, study="1.1", series="1.1.1", sop="1.1.1.1")
        batch = [
            make_instance(study="1.2", series="1.2.1", sop="1.2.1.1"),
            make_instance(study="1.9", series="1.1.1", sop="1.9.1.1"),  # series of study 1.1
            make_instance(study="1.2", series="1.2.1", sop="1.2.1.2"),
        ]
        results = store.add_instances(batch, replace=False)
        assert isinstance(results[1], Conflict)
        assert [results[0].outcome, results[2].outcome] == ["stored", "stored"]
        assert self.study_row(store, "1.9") is None  # nothing of the refused item remains
        assert store.find_instance("c1", "1.9.1.1") is None
        assert self.study_row(store, "1.2")[col("NumberOfStudyRelatedInstances")] == 2
        assert store.counts() == {"patients": 1, "studies": 2, "series": 2, "instances": 3}

    # --- counters ------------------------------------------------------------------------------
    def test_counters_follow_adds(self, store):
        self.add(store, series="1.1.1", sop="1.1.1.1", Modality="CT")
        row = self.study_row(store, "1.1")
        assert (row[col("NumberOfStudyRelatedSeries")], row[col("NumberOfStudyRelatedInstances")]) == (1, 1)
        assert modalities(row) == {"CT"}
        self.add(store, series="1.1.1", sop="1.1.1.2", Modality="CT")
        self.add(store, series="1.1.2", sop="1.1.2.1", Modality="MR")
        self.add(store, series="1.1.3", sop="1.1.3.1", Modality="CT")
        row = self.study_row(store, "1.1")
        assert row[col("NumberOfStudyRelatedSeries")] == 3
        assert row[col("NumberOfStudyRelatedInstances")] == 4
        assert modalities(row) == {"CT", "MR"}
        assert self.series_row(store, "1.1.1")[col("NumberOfSeriesRelatedInstances")] == 2
        assert self.series_row(store, "1.1.2")[col("NumberOfSeriesRelatedInstances")] == 1
        assert store.counts() == {"patients": 1, "studies": 1, "series": 3, "instances": 4}

    def test_counters_follow_deletes(self, store):
        for series, sop, modality in (("1.1.1", "1.1.1.1", "CT"), ("1.1.1", "1.1.1.2", "CT"),
                                      ("1.1.2", "1.1.2.1", "MR"), ("1.1.3", "1.1.3.1", "PX")):
            self.add(store, series=series, sop=sop, Modality=modality)

        removed = store.delete("c1", "1.1", "1.1.1", "1.1.1.2")
        assert [r.sop_uid for r in removed] == ["1.1.1.2"]
        row = self.study_row(store, "1.1")
        assert (row[col("NumberOfStudyRelatedSeries")], row[col("NumberOfStudyRelatedInstances")]) == (3, 3)
        assert self.series_row(store, "1.1.1")[col("NumberOfSeriesRelatedInstances")] == 1

        removed = store.delete("c1", "1.1", "1.1.2")
        assert [r.sop_uid for r in removed] == ["1.1.2.1"]
        assert self.series_row(store, "1.1.2") is None
        row = self.study_row(store, "1.1")
        assert (row[col("NumberOfStudyRelatedSeries")], row[col("NumberOfStudyRelatedInstances")]) == (2, 2)
        assert modalities(row) == {"CT", "PX"}

        # Deleting the last instance of a series drops the series.
        store.delete("c1", "1.1", "1.1.3", "1.1.3.1")
        assert self.series_row(store, "1.1.3") is None
        row = self.study_row(store, "1.1")
        assert (row[col("NumberOfStudyRelatedSeries")], row[col("NumberOfStudyRelatedInstances")]) == (1, 1)
        assert modalities(row) == {"CT"}

        # ... and of a study drops the study.
        store.delete("c1", "1.1", "1.1.1", "1.1.1.1")
        assert self.study_row(store, "1.1") is None
        assert store.counts() == {"patients": 0, "studies": 0, "series": 0, "instances": 0}

    def test_delete_study(self, store):
        for series, sop in (("1.1.1", "1.1.1.1"), ("1.1.1", "1.1.1.2"), ("1.1.2", "1.1.2.1")):
            self.add(store, series=series, sop=sop)
        self.add(store, study="1.2", series="1.2.1", sop="1.2.1.1")
        removed = store.delete("c1", "1.1")
        assert sorted(r.sop_uid for r in removed) == ["1.1.1.1", "1.1.1.2", "1.1.2.1"]
        assert all(isinstance(r, InstanceRecord) and r.study_uid == "1.1" for r in removed)
        assert self.uids(store) == ["1.2"]
        assert store.instances("c1", "1.1") == []
        assert store.find_instance("c1", "1.1.1.1") is None
        assert store.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}

    def test_delete_nothing(self, store):
        self.add(store)
        assert store.delete("c1", "9.9") == []
        assert store.delete("c1", "1.1", "9.9") == []
        assert store.delete("c1", "1.1", "1.1.1", "9.9") == []
        assert store.counts()["instances"] == 1

    # --- the CRC-32 of rows indexed without one (older versions) ----------------------------------
    def test_set_crc32_fills_a_missing_one_only(self, store):
        new = make_instance()
        new.record.crc32 = None
        store.add_instance(new, replace=False)
        assert store.find_instance("c1", "1.1.1.1").crc32 is None
        sha = new.record.sha256
        assert not store.set_crc32("c1", "1.1.1.1", "0" * 64, 1234)  # other bytes: left alone
        assert not store.set_crc32("c2", "1.1.1.1", sha, 1234)  # another clinic's
        assert store.set_crc32("c1", "1.1.1.1", sha, 0xFFFFFFFF)
        assert store.find_instance("c1", "1.1.1.1").crc32 == 0xFFFFFFFF
        assert store.instances("c1", "1.1")[0].crc32 == 0xFFFFFFFF
        assert not store.set_crc32("c1", "1.1.1.1", sha, 5)  # it has one now
        assert store.find_instance("c1", "1.1.1.1").crc32 == 0xFFFFFFFF

    # --- tenants ---------------------------------------------------------------------------------
    def test_tenants_are_isolated(self, store):
        a = make_instance("c1", PatientName="Alpha^One", content="a")
        b = make_instance("c2", PatientName="Beta^Two", content="b")
        assert store.add_instance(a, replace=False).outcome == "stored"
        assert store.add_instance(b, replace=False).outcome == "stored"  # not a duplicate or conflict
        assert store.find_instance("c1", "1.1.1.1") == a.record
        assert store.find_instance("c2", "1.1.1.1") == b.record
        assert store.find_instance("c3", "1.1.1.1") is None

        for clinic, name in (("c1", "alpha^one"), ("c2", "beta^two")):
            for level in ("study", "series", "instance"):
                rows = self.rows(store, level, clinic=clinic)
                assert len(rows) == 1
                assert json.loads(rows[0]["study_json"])["00100010"]["Value"][0]["Alphabetic"] == name.title()
            assert [r.clinic_id for r in store.instances(clinic, "1.1")] == [clinic]
            [header] = list(store.instance_headers(clinic, "1.1"))
            assert json.loads(header)["00100010"]["Value"][0]["Alphabetic"] == name.title()
        # A match on the other clinic's values finds nothing.
        assert self.uids(store, "study", Match("PatientName", "wildcard", "beta*"), clinic="c1") == []
        assert self.uids(store, clinic="c3") == []

        removed = store.delete("c2", "1.1")
        assert [(r.clinic_id, r.sop_uid) for r in removed] == [("c2", "1.1.1.1")]
        assert store.find_instance("c1", "1.1.1.1") == a.record
        assert store.counts("c1") == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
        assert store.counts("c2") == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
        assert store.counts()["instances"] == 1

    def test_same_series_uid_under_other_study_in_other_tenant_is_no_conflict(self, store):
        self.add(store, clinic="c1", study="1.1", series="5.5", sop="5.5.1")
        assert self.add(store, clinic="c2", study="1.2", series="5.5", sop="5.5.1") == "stored"
        assert self.uids(store, "series", clinic="c2", study_uid="1.2") == ["5.5"]

    def test_deletes_of_one_tenant_keep_the_other_counters(self, store):
        for clinic in ("c1", "c2"):
            self.add(store, clinic=clinic, series="1.1.1", sop="1.1.1.1")
            self.add(store, clinic=clinic, series="1.1.2", sop="1.1.2.1", Modality="MR")
        store.delete("c2", "1.1", "1.1.2")
        row = self.study_row(store, "1.1", clinic="c1")
        assert (row[col("NumberOfStudyRelatedSeries")], row[col("NumberOfStudyRelatedInstances")]) == (2, 2)
        assert modalities(row) == {"CT", "MR"}
        assert modalities(self.study_row(store, "1.1", clinic="c2")) == {"CT"}

    # --- search: order, paging --------------------------------------------------------------------
    def test_study_list_newest_first_dateless_last(self, seeded):
        assert self.uids(seeded) == [S1, S2, S3, S4]

    def test_limit_offset_truncated(self, seeded):
        first = seeded.search(Query(level="study", clinic_id="c1", limit=2))
        assert [r["study_uid"] for r in first.rows] == [S1, S2] and first.truncated
        second = seeded.search(Query(level="study", clinic_id="c1", limit=2, offset=2))
        assert [r["study_uid"] for r in second.rows] == [S3, S4] and not second.truncated
        last = seeded.search(Query(level="study", clinic_id="c1", limit=2, offset=3))
        assert [r["study_uid"] for r in last.rows] == [S4] and not last.truncated
        exact = seeded.search(Query(level="study", clinic_id="c1", limit=4))
        assert len(exact.rows) == 4 and not exact.truncated
        beyond = seeded.search(Query(level="study", clinic_id="c1", limit=2, offset=10))
        assert beyond.rows == [] and not beyond.truncated
        instances = seeded.search(Query(level="instance", clinic_id="c1", limit=5))
        assert len(instances.rows) == 5 and instances.truncated

    def test_study_rows_carry_counters_and_json(self, seeded):
        row = self.study_row(seeded, S1)
        assert row[col("NumberOfStudyRelatedSeries")] == 2
        assert row[col("NumberOfStudyRelatedInstances")] == 4
        assert modalities(row) == {"IO", "PX"}
        assert row[col("StudyDescription")] == "Panoramic"
        assert row[col("StudyDate")] == "20240301"
        study_json = json.loads(row["study_json"])
        assert study_json["00100010"]["Value"][0] == {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞",
                                                      "Phonetic": "홍^길동"}
        assert self.study_row(seeded, S4)[col("StudyDate")] is None

    def test_series_rows(self, seeded):
        assert self.uids(seeded, "series", study_uid=S1) == ["1.1.1", "1.1.2"]
        row = self.series_row(seeded, "1.1.2")
        assert row[col("NumberOfSeriesRelatedInstances")] == 3
        assert row[col("Modality")] == "IO"
        assert row[col("SeriesNumber")] == 2
        assert row["study_uid"] == S1  # the parent's keys come with the row
        assert "0020000E" in json.loads(row["series_json"])

    def test_instance_search_order_and_headers(self, seeded):
        expected = ["1.1.1.1", "1.1.2.1", "1.1.2.2", "1.1.2.3"]
        assert self.uids(seeded, "instance", study_uid=S1) == expected
        rows = self.rows(seeded, "instance", study_uid=S1, with_headers=True)
        assert [json.loads(r["header_json"])["00080018"]["Value"][0] for r in rows] == expected
        assert [r["series_uid"] for r in rows] == ["1.1.1", "1.1.2", "1.1.2", "1.1.2"]
        assert self.uids(seeded, "instance", study_uid=S1, series_uid="1.1.2") == expected[1:]
        assert self.uids(seeded, "instance", study_uid=S2, series_uid="1.1.2") == []

    def test_instances_and_headers_order(self, seeded):
        expected = ["1.1.1.1", "1.1.2.1", "1.1.2.2", "1.1.2.3"]
        records = seeded.instances("c1", S1)
        assert [r.sop_uid for r in records] == expected
        assert [r.instance_number for r in records] == [1, 1, 2, 3]
        assert all(r.clinic_id == "c1" and r.study_uid == S1 for r in records)
        headers_ = [json.loads(h) for h in seeded.instance_headers("c1", S1)]
        assert [h["00080018"]["Value"][0] for h in headers_] == expected
        assert [r.sop_uid for r in seeded.instances("c1", S1, "1.1.2")] == expected[1:]
        assert [r.sop_uid for r in seeded.instances("c1", S1, "1.1.2", "1.1.2.2")] == ["1.1.2.2"]
        assert len(list(seeded.instance_headers("c1", S1, "1.1.2", "1.1.2.2"))) == 1
        assert seeded.instances("c1", S1, "1.2.1") == []  # series of another study
        assert list(seeded.instance_headers("c1", "9.9")) == []

    # --- search: matching --------------------------------------------------------------------------
    @pytest.mark.parametrize("match, expected", [
        (Match("PatientID", "single", "P2"), [S2]),
        (Match("PatientID", "single", "p2"), []),  # not a person name: case matters
        (Match("AccessionNumber", "single", "A[1]"), [S3]),
        (Match("PatientSex", "single", "M"), [S2]),
        (Match("StudyDescription", "single", "Panoramic"), [S1]),
        (Match("PatientName", "single", "Doe^John^Q"), [S2]),
        (Match("PatientName", "single", "doe^john^q"), [S2]),
        (Match("PatientName", "single", "Doe^John"), []),  # single value is the whole name
        (Match("PatientName", "single", "洪^吉洞"), [S1]),
        (Match("StudyInstanceUID", "single", S3), [S3]),
        (Match("StudyDate", "single", "20230115"), [S2, S3]),
        (Match("PatientBirthDate", "single", "19800101"), [S2]),
    ], ids=repr)
    def test_single_value(self, seeded, match, expected):
        assert self.uids(seeded, "study", match) == expected

    @pytest.mark.parametrize("match, expected", [
        (Match("AccessionNumber", "wildcard", "ACC*"), [S1, S2, S4]),
        (Match("AccessionNumber", "wildcard", "ACC-?"), [S1, S2, S4]),
        (Match("AccessionNumber", "wildcard", "*-2"), [S2]),
        (Match("AccessionNumber", "wildcard", "A[1]*"), [S3]),  # brackets are literal, not a class
        (Match("AccessionNumber", "wildcard", "A[1-3]"), []),
        (Match("PatientID", "wildcard", "P?"), [S1, S2, S3, S4]),
        (Match("PatientName", "wildcard", "doe*"), [S2]),
        (Match("PatientName", "wildcard", "DOE*"), [S2]),
        (Match("PatientName", "wildcard", "*ü*"), [S3]),
        (Match("PatientName", "wildcard", "?ong*"), [S1]),
        (Match("PatientName", "wildcard", "*^j*"), [S2, S3]),
        (Match("PatientName", "wildcard", "洪*"), [S1]),
        (Match("PatientName", "wildcard", "홍^*"), [S1]),
        (Match("StudyDescription", "wildcard", "Pano*"), [S1]),
    ], ids=repr)
    def test_wildcard(self, seeded, match, expected):
        assert self.uids(seeded, "study", match) == expected

    @pytest.mark.parametrize("match, expected", [
        (Match("StudyInstanceUID", "uids", (S1, S3, "9.9")), [S1, S3]),
        (Match("StudyInstanceUID", "uids", ("9.8", "9.9")), []),
    ], ids=repr)
    def test_uid_list(self, seeded, match, expected):
        assert self.uids(seeded, "study", match) == expected

    def test_uid_list_at_lower_levels(self, seeded):
        assert sorted(self.uids(seeded, "series", Match("SeriesInstanceUID", "uids", ("1.2.2", "1.4.1")))) == \
            ["1.2.2", "1.4.1"]
        assert sorted(self.uids(seeded, "instance", Match("SOPInstanceUID", "uids", ("1.1.2.2", "1.3.1.1")))) \
            == ["1.1.2.2", "1.3.1.1"]

    @pytest.mark.parametrize("match, expected", [
        (Match("StudyDate", "range", ("20230101", "20231231")), [S2, S3]),
        (Match("StudyDate", "range", ("20230115", "20230115")), [S2, S3]),
        (Match("StudyDate", "range", ("20240101", None)), [S1]),
        (Match("StudyDate", "range", (None, "20231231")), [S2, S3]),
        (Match("StudyDate", "range", ("20250101", None)), []),
        (Match("PatientBirthDate", "range", (None, "19991231")), [S2]),
    ], ids=repr)
    def test_date_range(self, seeded, match, expected):
        assert self.uids(seeded, "study", match) == expected

    @pytest.mark.parametrize("match, expected", [
        (Match("StudyTime", "range", ("1000", "1500")), [S1, S2]),
        (Match("StudyTime", "range", ("101500", "101500")), [S2]),
        (Match("StudyTime", "range", ("14", None)), [S1]),
        (Match("StudyTime", "range", (None, "0800")), [S3]),  # 08:00:00.5 is within 08:00
        (Match("StudyTime", "range", (None, "075959")), []),
        (Match("StudyTime", "single", "14"), [S1]),  # a time matches at its precision
        (Match("StudyTime", "single", "080000.5"), [S3]),
        (Match("StudyTime", "single", "1430"), [S1]),
    ], ids=repr)
    def test_time(self, seeded, match, expected):
        assert self.uids(seeded, "study", match) == expected

    @pytest.mark.parametrize("words, expected", [
        ("gil", [S1]),  # prefix of a component (given name)
        ("hong", [S1]),
        ("GILDONG", [S1]),  # case-insensitive
        ("ong", []),  # not a prefix of any component
        ("吉", [S1]),  # ideographic group
        ("洪", [S1]),
        ("길동", [S1]),  # phonetic group
        ("j", [S2, S3]),
        ("jo", [S2]),
        ("q", [S2]),  # middle name
        ("doe jo", [S2]),  # every word must match some component
        ("doe^jo", [S2]),
        ("doe ju", []),
        ("mül", [S3]),
        ("smith^an", [S4]),
    ])
    def test_fuzzy_person_name(self, seeded, words, expected):
        assert self.uids(seeded, "study", Match("PatientName", "fuzzy", words)) == expected

    def test_fuzzy_referring_physician(self, seeded):
        assert self.uids(seeded, "study", Match("ReferringPhysicianName", "fuzzy", "kim")) == [S1]
        assert self.uids(seeded, "study", Match("ReferringPhysicianName", "fuzzy", "doc")) == [S1]
        assert self.uids(seeded, "study", Match("ReferringPhysicianName", "fuzzy", "hong")) == []

    @pytest.mark.parametrize("match, expected", [
        (Match("ModalitiesInStudy", "single", "IO"), [S1]),
        (Match("ModalitiesInStudy", "single", "CT"), [S2, S3]),
        (Match("ModalitiesInStudy", "single", "C"), []),  # a whole modality, not a substring
        (Match("ModalitiesInStudy", "uids", ("MR", "PX")), [S1, S2, S4]),
        (Match("ModalitiesInStudy", "uids", ("US", "XA")), []),
    ], ids=repr)
    def test_modalities_in_study(self, seeded, match, expected):
        assert self.uids(seeded, "study", match) == expected

    @pytest.mark.parametrize("level, match, expected", [
        ("study", Match("NumberOfStudyRelatedSeries", "single", "2"), [S1, S2]),
        ("study", Match("NumberOfStudyRelatedInstances", "single", "4"), [S1]),
        ("series", Match("SeriesNumber", "single", "2"), ["1.1.2", "1.2.2"]),
        ("series", Match("NumberOfSeriesRelatedInstances", "single", "3"), ["1.1.2"]),
        ("series", Match("Modality", "single", "CT"), ["1.2.1", "1.3.1"]),
        ("instance", Match("InstanceNumber", "single", "3"), ["1.1.2.3"]),
        ("instance", Match("Rows", "single", "1024"), ["1.1.1.1"]),
        ("instance", Match("Columns", "single", "256"), ["1.1.2.1", "1.1.2.2", "1.1.2.3"]),
    ], ids=repr)
    def test_integer_and_lower_level_attributes(self, seeded, level, match, expected):
        # Across studies the order of series and instances is not part of the contract.
        assert sorted(self.uids(seeded, level, match)) == expected

    def test_series_level_matches_study_attributes(self, seeded):
        assert self.uids(seeded, "series", Match("PatientID", "single", "P2")) == ["1.2.1", "1.2.2"]
        assert self.uids(seeded, "instance", Match("PatientID", "single", "P3")) == ["1.3.1.1"]

    def test_matches_combine_with_and(self, seeded):
        found = self.uids(seeded, "study", Match("PatientName", "wildcard", "*^j*"),
                          Match("StudyTime", "range", ("1000", None)))
        assert found == [S2]
        found = self.uids(seeded, "study", Match("ModalitiesInStudy", "single", "CT"),
                          Match("StudyDate", "range", ("20230101", "20231231")),
                          Match("AccessionNumber", "wildcard", "ACC*"))
        assert found == [S2]

    # --- the tenant scope of searches: own clinic plus shares ---------------------------------
    @pytest.fixture
    def two_clinics(self, store):
        """c1 has studies 1.1 (two series) and 1.2; c2 has 2.1 and its own copy of 1.2."""
        for item in (dict(clinic="c1", study="1.1", series="1.1.1", sop="1.1.1.1"),
                     dict(clinic="c1", study="1.1", series="1.1.2", sop="1.1.2.1", Modality="MR"),
                     dict(clinic="c1", study="1.2", series="1.2.1", sop="1.2.1.1"),
                     dict(clinic="c2", study="2.1", series="2.1.1", sop="2.1.1.1"),
                     dict(clinic="c2", study="1.2", series="9.2.1", sop="9.2.1.1", content="c2")):
            assert self.add(store, **item) == "stored"
        return store

    def test_search_scope_own_clinic_and_shared_studies(self, two_clinics):
        shared = (SharedScope("c1", "1.1"),)
        assert sorted(self.uids(two_clinics, "study", clinic="c2", shared=shared)) == ["1.1", "1.2", "2.1"]
        assert sorted(self.uids(two_clinics, "series", clinic="c2", shared=shared)) == ["1.1.1", "1.1.2", "2.1.1",
                                                                                         "9.2.1"]
        assert sorted(self.uids(two_clinics, "instance", clinic="c2", shared=shared, study_uid="1.1")) == \
            ["1.1.1.1", "1.1.2.1"]
        # without the share, nothing of c1
        assert sorted(self.uids(two_clinics, "study", clinic="c2")) == ["1.2", "2.1"]
        rows = self.rows(two_clinics, "study", clinic="c2", shared=shared)
        assert {r["study_uid"]: r["clinic_id"] for r in rows} == {"1.1": "c1", "1.2": "c2", "2.1": "c2"}

    def test_shared_series_only_shows_that_series(self, two_clinics):
        shared = (SharedScope("c1", "1.1", "1.1.2"),)
        assert "1.1" in self.uids(two_clinics, "study", clinic="c2", shared=shared)
        assert self.uids(two_clinics, "series", clinic="c2", shared=shared, study_uid="1.1") == ["1.1.2"]
        assert self.uids(two_clinics, "instance", clinic="c2", shared=shared, study_uid="1.1") == ["1.1.2.1"]
        assert self.uids(two_clinics, "instance", clinic="c2", shared=shared, study_uid="1.1",
                         series_uid="1.1.1") == []

    def test_own_study_hides_a_shared_one_with_the_same_uid(self, two_clinics):
        rows = self.rows(two_clinics, "study", Match("StudyInstanceUID", "single", "1.2"), clinic="c2",
                         shared=(SharedScope("c1", "1.2"),))
        assert [(r["study_uid"], r["clinic_id"]) for r in rows] == [("1.2", "c2")]

    def test_shares_only_scope(self, two_clinics):
        shared = (SharedScope("c1", "1.2"), SharedScope("c2", "2.1"))
        assert sorted(self.uids(two_clinics, "study", clinic=None, shared=shared)) == ["1.2", "2.1"]
        rows = self.rows(two_clinics, "study", clinic=None, shared=shared)
        assert sorted((r["study_uid"], r["clinic_id"]) for r in rows) == [("1.2", "c1"), ("2.1", "c2")]
        assert self.rows(two_clinics, "study", clinic=None) == []
        assert self.rows(two_clinics, "patient", clinic=None, shared=shared) == []  # patients: own clinic only

    def test_matches_apply_to_shared_rows_too(self, two_clinics):
        shared = (SharedScope("c1", "1.1"),)
        assert self.uids(two_clinics, "study", Match("ModalitiesInStudy", "single", "MR"), clinic="c2",
                         shared=shared) == ["1.1"]
        assert self.uids(two_clinics, "study", Match("ModalitiesInStudy", "single", "MR"), clinic="c2") == []

    def test_clinics_with_study(self, two_clinics):
        assert two_clinics.clinics_with_study("1.2") == ["c1", "c2"]
        assert two_clinics.clinics_with_study("2.1") == ["c2"]
        assert two_clinics.clinics_with_study("9.9") == []

    def test_clinic_ids(self, two_clinics):
        assert two_clinics.clinic_ids() == ["c1", "c2"]


class QueryPlanChecks:
    """The searches OHIF and the clinics' viewers send most use an index, whatever the archive's
    size: checked with the database's own EXPLAIN on a few thousand studies. The backend's
    fixture mixin gives ``analyze(backend)``: what a running database does to its statistics
    (PostgreSQL's autovacuum; nothing on SQLite, whose planner has fixed statistics)."""

    STUDIES = 2000

    @pytest.fixture
    def filled(self, backend):
        items = []
        for n in range(self.STUDIES):
            family = ["Smith", "Kim", "Lee", "Park", "Nakamura", "Garcia"][n % 6] + ("" if n % 7 else f"x{n}")
            items.append(make_instance(study=f"2.25.{n}", series=f"2.25.{n}.1", sop=f"2.25.{n}.1.1",
                                       PatientID=f"P{n // 2:06d}", PatientName=f"{family}^Given{n % 13}",
                                       StudyDate=f"20{10 + n % 15:02d}{1 + n % 12:02d}{1 + n % 28:02d}",
                                       AccessionNumber=f"ACC{n:07d}"))
        for start in range(0, len(items), 500):
            backend.instances.add_instances(items[start:start + 500], replace=False)
        self.analyze(backend)
        return backend

    @staticmethod
    def _plan(backend, **matches) -> str:
        query = Query(level="study", clinic_id="c1", limit=101, matches=[
            Match(k, "wildcard" if "*" in v else "single", v) for k, v in matches.items()])
        return "\n".join(backend.instances.explain(query))

    def test_common_searches_use_an_index(self, filled):
        # One test, one fill: filling is what costs.
        plan = self._plan(filled, PatientID="P000123")
        assert "studies_by_patient_id" in plan, plan
        for pattern in ("smi*", "nakamurax*", "zzz*"):
            plan = self._plan(filled, PatientName=pattern)
            assert "studies_by_name" in plan and not _walks_all(plan), (pattern, plan)
        plan = self._plan(filled)  # the study list: newest first, straight off the date index
        assert "studies_by_date" in plan and "TEMP B-TREE" not in plan and " Sort " not in plan, plan
        plan = self._plan(filled, AccessionNumber="ACC0000042")
        assert "studies_by_accession" in plan, plan


def _walks_all(plan: str) -> bool:
    """A plan that reads every study of the clinic (or of the table)."""
    return ("Seq Scan" in plan or "SCAN s" in plan or
            "USING INDEX studies_by_date" in plan or "Index Scan using studies_by_date" in plan)
