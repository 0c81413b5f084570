"""The instance index in SQL: studies (with their patient's attributes), series and
instances, each QIDO-RS / C-FIND key a column, counters for the computed attributes, and
each instance's DICOM JSON; the one query model (:class:`storage.query.Query`) translated
to SQL. The statements run on SQLite and PostgreSQL alike; the dialect comes from the
database (:class:`storage.index.database.SqlDatabase`).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

from storage.attributes import BY_KEYWORD
from storage.errors import Conflict
from storage.query import Match, Query
from storage.records import AddResult, InstanceRecord, NewInstance, SearchResult

logger = logging.getLogger(__name__)

STUDY_COLUMNS = (
    "study_uid", "patient_id", "patient_name", "patient_name_alpha", "patient_name_ideo",
    "patient_name_phon", "patient_birth_date", "patient_sex", "study_date", "study_time",
    "accession_number", "referring_physician_name", "referring_physician_name_alpha",
    "referring_physician_name_ideo", "referring_physician_name_phon", "study_id",
    "study_description",
)
SERIES_COLUMNS = (
    "series_uid", "modality", "series_number", "series_description", "body_part_examined",
    "series_date", "series_time", "pps_start_date", "pps_start_time",
)
INSTANCE_COLUMNS = (
    "sop_uid", "sop_class_uid", "instance_number", "rows", "columns", "bits_allocated",
    "number_of_frames", "content_date", "content_time",
)
RECORD_COLUMNS = (
    "s.clinic_id", "s.study_uid", "se.series_uid", "i.sop_uid", "i.sop_class_uid",
    "i.transfer_syntax", "i.blob_key", "i.size", "i.sha256", "i.frame_index",
    "i.number_of_frames", "i.instance_number", "i.rows", "i.columns", "i.dataset_sha256", "i.crc32",
)
_TABLE_ALIAS = {"study": "s", "series": "se", "instance": "i"}
# Stored times keep their own precision ("101500"), so a low bound is padded to HHMMSS
# only: "101500.000000" would sort after a stored "101500" and exclude it.
_TIME_LOW_PAD, _TIME_HIGH_PAD = "000000", "235959.999999"


def _record(row) -> InstanceRecord:
    return InstanceRecord(*row)


# Two studies "of one patient" share their PatientID, or both have none.
_SAME_PATIENT = "(s.patient_id = p.patient_id OR (s.patient_id IS NULL AND p.patient_id IS NULL))"


class SqlInstanceIndex:
    """:class:`storage.base.InstanceIndex` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    # --- writes --------------------------------------------------------------------
    def find_instance(self, clinic_id: str, sop_uid: str) -> InstanceRecord | None:
        with self.db.read() as cur:
            cur.execute(self.db.sql(
                f"SELECT {', '.join(RECORD_COLUMNS)} FROM instances i JOIN series se ON se.id = i.series_pk "
                "JOIN studies s ON s.id = i.study_pk WHERE i.clinic_id = ? AND i.sop_uid = ?"),
                (clinic_id, sop_uid))
            row = cur.fetchone()
        return _record(row) if row else None

    def add_instance(self, new: NewInstance, *, replace: bool) -> AddResult:
        result = self.add_instances([new], replace=replace)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def add_instances(self, items: list[NewInstance], *, replace: bool) -> list[AddResult | Conflict]:
        """Index several instances in one transaction (one commit, one fsync).

        Each item runs under its own savepoint, so one item's Conflict leaves the
        others stored; that item's result is the Conflict itself.
        """
        return self.db.retrying(lambda: self._add_all(items, replace))

    def _add_all(self, items: list[NewInstance], replace: bool) -> list[AddResult | Conflict]:
        results: list[AddResult | Conflict] = []
        with self.db.transaction() as cur:
            for new in items:
                cur.execute("SAVEPOINT add_instance")
                try:
                    results.append(self._add(cur, new, replace))
                except Conflict as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT add_instance")
                    results.append(exc)
                cur.execute("RELEASE SAVEPOINT add_instance")
        return results

    def _add(self, cur, new: NewInstance, replace: bool) -> AddResult:
        rec = new.record
        cur.execute(self.db.sql(
            f"SELECT {', '.join(RECORD_COLUMNS)} FROM instances i JOIN series se ON se.id = i.series_pk "
            "JOIN studies s ON s.id = i.study_pk WHERE i.clinic_id = ? AND i.sop_uid = ?"),
            (rec.clinic_id, rec.sop_uid))
        row = cur.fetchone()
        existing = _record(row) if row else None
        if existing is not None:
            if existing.same_dataset(rec):
                return AddResult("duplicate", existing)
            if not replace:
                return AddResult("conflict", existing)
            self._delete_instances(cur, [existing])
        study_pk = self._upsert_study(cur, new)
        series_pk = self._upsert_series(cur, new, study_pk)
        attrs = new.attributes
        columns = ("series_pk", "study_pk", "clinic_id", *INSTANCE_COLUMNS, "transfer_syntax",
                   "blob_key", "size", "sha256", "dataset_sha256", "crc32", "frame_index", "header_json")
        values = (series_pk, study_pk, rec.clinic_id, rec.sop_uid, rec.sop_class_uid,
                  *(attrs.get(c) for c in INSTANCE_COLUMNS[2:]), rec.transfer_syntax,
                  rec.blob_key, rec.size, rec.sha256, rec.dataset_sha256, rec.crc32, rec.frame_index,
                  new.header_json)
        cur.execute(self.db.sql(
            f"INSERT INTO instances ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"), values)
        cur.execute(self.db.sql("UPDATE series SET num_instances = num_instances + 1 WHERE id = ?"), (series_pk,))
        cur.execute(self.db.sql("UPDATE studies SET num_instances = num_instances + 1 WHERE id = ?"), (study_pk,))
        return AddResult("replaced" if existing else "stored", existing)

    def _upsert_study(self, cur, new: NewInstance) -> int:
        clinic, uid = new.record.clinic_id, new.record.study_uid
        cur.execute(self.db.sql("SELECT id FROM studies WHERE clinic_id = ? AND study_uid = ?"), (clinic, uid))
        row = cur.fetchone()
        if row:
            return row[0]
        columns = ("clinic_id", *STUDY_COLUMNS, "study_json")
        values = (clinic, uid, *(new.attributes.get(c) or ("" if c.endswith(("_alpha", "_ideo", "_phon")) else None)
                                 for c in STUDY_COLUMNS[1:]), new.study_json)
        cur.execute(self.db.sql(
            f"INSERT INTO studies ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) RETURNING id"), values)
        return cur.fetchone()[0]

    def _upsert_series(self, cur, new: NewInstance, study_pk: int) -> int:
        clinic, uid = new.record.clinic_id, new.record.series_uid
        cur.execute(self.db.sql("SELECT id, study_pk FROM series WHERE clinic_id = ? AND series_uid = ?"), (clinic, uid))
        row = cur.fetchone()
        if row:
            if row[1] != study_pk:
                raise Conflict(f"series {uid} is already stored under another study")
            return row[0]
        columns = ("study_pk", "clinic_id", *SERIES_COLUMNS, "series_json")
        values = (study_pk, clinic, uid, *(new.attributes.get(c) for c in SERIES_COLUMNS[1:]), new.series_json)
        cur.execute(self.db.sql(
            f"INSERT INTO series ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) RETURNING id"), values)
        series_pk = cur.fetchone()[0]
        cur.execute(self.db.sql("UPDATE studies SET num_series = num_series + 1 WHERE id = ?"), (study_pk,))
        self._refresh_modalities(cur, study_pk)
        return series_pk

    def _refresh_modalities(self, cur, study_pk: int) -> None:
        cur.execute(self.db.sql(
            "SELECT DISTINCT modality FROM series WHERE study_pk = ? AND modality IS NOT NULL ORDER BY modality"),
            (study_pk,))
        modalities = [r[0] for r in cur.fetchall() if r[0]]
        joined = "\\" + "\\".join(modalities) + "\\" if modalities else ""
        cur.execute(self.db.sql("UPDATE studies SET modalities = ? WHERE id = ?"), (joined, study_pk))

    def _delete_instances(self, cur, records: list[InstanceRecord]) -> None:
        """Delete instance rows, keep counters true and drop emptied series and studies."""
        touched_series: set[int] = set()
        touched_studies: set[int] = set()
        for rec in records:
            cur.execute(self.db.sql(
                "DELETE FROM instances WHERE clinic_id = ? AND sop_uid = ? RETURNING series_pk, study_pk"),
                (rec.clinic_id, rec.sop_uid))
            row = cur.fetchone()
            if not row:
                continue
            series_pk, study_pk = row
            cur.execute(self.db.sql("UPDATE series SET num_instances = num_instances - 1 WHERE id = ?"), (series_pk,))
            cur.execute(self.db.sql("UPDATE studies SET num_instances = num_instances - 1 WHERE id = ?"), (study_pk,))
            touched_series.add(series_pk)
            touched_studies.add(study_pk)
        for series_pk in touched_series:
            cur.execute(self.db.sql("DELETE FROM series WHERE id = ? AND num_instances <= 0 RETURNING study_pk"),
                        (series_pk,))
            row = cur.fetchone()
            if row:
                cur.execute(self.db.sql("UPDATE studies SET num_series = num_series - 1 WHERE id = ?"), (row[0],))
        for study_pk in touched_studies:
            cur.execute(self.db.sql("DELETE FROM studies WHERE id = ? AND num_instances <= 0"), (study_pk,))
            self._refresh_modalities(cur, study_pk)

    def set_crc32(self, clinic_id: str, sop_uid: str, sha256: str, crc32: int) -> bool:
        def update() -> bool:
            with self.db.transaction() as cur:
                cur.execute(self.db.sql("UPDATE instances SET crc32 = ? WHERE clinic_id = ? AND sop_uid = ? "
                                        "AND sha256 = ? AND crc32 IS NULL"), (crc32, clinic_id, sop_uid, sha256))
                return cur.rowcount > 0

        return self.db.retrying(update)

    def delete(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None) -> list[InstanceRecord]:
        return self.db.retrying(lambda: self._delete(clinic_id, study_uid, series_uid, sop_uid))

    def _delete(self, clinic_id: str, study_uid: str, series_uid: str | None,
                sop_uid: str | None) -> list[InstanceRecord]:
        with self.db.transaction() as cur:
            where, params = self._scope(clinic_id, study_uid, series_uid, sop_uid)
            cur.execute(self.db.sql(
                f"SELECT {', '.join(RECORD_COLUMNS)} FROM instances i JOIN series se ON se.id = i.series_pk "
                f"JOIN studies s ON s.id = i.study_pk WHERE {where}"), params)
            records = [_record(r) for r in cur.fetchall()]
            self._delete_instances(cur, records)
        return records

    # --- reads ---------------------------------------------------------------------
    @staticmethod
    def _scope(clinic_id: str, study_uid: str | None, series_uid: str | None,
               sop_uid: str | None) -> tuple[str, list[Any]]:
        where, params = ["s.clinic_id = ?"], [clinic_id]
        for column, value in (("s.study_uid", study_uid), ("se.series_uid", series_uid), ("i.sop_uid", sop_uid)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return " AND ".join(where), params

    def instances(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[InstanceRecord]:
        where, params = self._scope(clinic_id, study_uid, series_uid, sop_uid)
        with self.db.read() as cur:
            cur.execute(self.db.sql(
                f"SELECT {', '.join(RECORD_COLUMNS)} FROM instances i JOIN series se ON se.id = i.series_pk "
                f"JOIN studies s ON s.id = i.study_pk WHERE {where} "
                "ORDER BY se.series_number, se.id, i.instance_number, i.id"), params)
            return [_record(r) for r in cur.fetchall()]

    def instance_headers(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                         sop_uid: str | None = None) -> Iterator[str]:
        where, params = self._scope(clinic_id, study_uid, series_uid, sop_uid)
        with self.db.read() as cur:
            cur.execute(self.db.sql(
                "SELECT i.header_json FROM instances i JOIN series se ON se.id = i.series_pk "
                f"JOIN studies s ON s.id = i.study_pk WHERE {where} "
                "ORDER BY se.series_number, se.id, i.instance_number, i.id"), params)
            rows = cur.fetchall()
        for (text,) in rows:
            yield text

    def counts(self, clinic_id: str | None = None) -> dict[str, int]:
        where, params = ("WHERE clinic_id = ?", [clinic_id]) if clinic_id else ("", [])
        result = {}
        with self.db.read() as cur:
            for name, table in (("patients", "patients"), ("studies", "studies"),
                                ("series", "series"), ("instances", "instances")):
                cur.execute(self.db.sql(f"SELECT count(*) FROM {table} {where}"), params)
                result[name] = cur.fetchone()[0]
        return result

    # --- search --------------------------------------------------------------------
    def search(self, query: Query) -> SearchResult:
        if query.level == "patient":
            return self._search_patients(query)
        statement, params = self._statement(query)
        with self.db.read() as cur:
            cur.execute(self.db.sql(statement), params)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        truncated = len(rows) > query.limit
        # Columns repeat across joined tables (id, clinic_id, num_instances...):
        # later tables win, so the level's own num_instances is what remains.
        return SearchResult([dict(zip(names, r)) for r in rows[: query.limit]], truncated)

    def explain(self, query: Query) -> list[str]:
        """The database's plan of :meth:`search` for ``query``, one line per step (what the
        benchmark prints and the tests check: every common search uses an index)."""
        statement, params = self._statement(query)
        with self.db.read() as cur:
            cur.execute(self.db.sql(self.db.explain_prefix + statement), params)
            return [str(row[-1]) for row in cur.fetchall()]

    def _statement(self, query: Query) -> tuple[str, list[Any]]:
        select = ["s.*"]
        from_ = "studies s"
        order = self.db.study_order(query)
        if query.level in ("series", "instance"):
            select.append("se.*")
            from_ += " JOIN series se ON se.study_pk = s.id"
            order = "s.id, se.series_number NULLS LAST, se.id"
            select.append("s.num_series AS study_num_series, s.num_instances AS study_num_instances")
        if query.level == "instance":
            select.append("i.*" if query.with_headers else
                          ", ".join(f"i.{c}" for c in INSTANCE_COLUMNS))
            from_ += " JOIN instances i ON i.series_pk = se.id"
            order += ", i.instance_number NULLS LAST, i.id"
        where, params = self._tenant(query)
        conditions = [where]
        for column, value in (("s.study_uid", query.study_uid), ("se.series_uid", query.series_uid)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        for match in query.matches:
            sql, values = self._condition(match)
            conditions.append(sql)
            params.extend(values)
        statement = (f"SELECT {', '.join(select)} FROM {from_} WHERE {' AND '.join(conditions)} "
                     f"ORDER BY {order} LIMIT ? OFFSET ?")
        params.extend([query.limit + 1, query.offset])
        return statement, params

    def _tenant(self, query: Query) -> tuple[str, list[Any]]:
        """The rows the asker may see: its own clinic's, and the shared studies (or series) of
        other clinics, unless its own clinic holds a study with the same UID."""
        parts: list[str] = []
        params: list[Any] = []
        if query.clinic_id is not None:
            parts.append("s.clinic_id = ?")
            params.append(query.clinic_id)
        whole: dict[str, list[str]] = {}
        for scope in query.shared:
            if scope.series_uid is None or query.level == "study":
                whole.setdefault(scope.clinic_id, []).append(scope.study_uid)
        for clinic, studies in whole.items():
            studies = sorted(set(studies))
            parts.append(f"(s.clinic_id = ? AND s.study_uid IN ({', '.join('?' * len(studies))})"
                         + self._not_own(query) + ")")
            params.extend([clinic, *studies] + ([query.clinic_id] if query.clinic_id is not None else []))
        if query.level != "study":
            for scope in query.shared:
                if scope.series_uid is not None and scope.study_uid not in whole.get(scope.clinic_id, ()):
                    parts.append("(s.clinic_id = ? AND s.study_uid = ? AND se.series_uid = ?"
                                 + self._not_own(query) + ")")
                    params.extend([scope.clinic_id, scope.study_uid, scope.series_uid]
                                  + ([query.clinic_id] if query.clinic_id is not None else []))
        if not parts:
            return "1 = 0", []
        return "(" + " OR ".join(parts) + ")", params

    @staticmethod
    def _not_own(query: Query) -> str:
        if query.clinic_id is None:
            return ""
        return " AND NOT EXISTS (SELECT 1 FROM studies o WHERE o.clinic_id = ? AND o.study_uid = s.study_uid)"

    def _search_patients(self, query: Query) -> SearchResult:
        """Patient level (Patient Root C-FIND): rows of the ``patients`` view that have a
        matching study, with the newest study's patient attributes as ``study_json``."""
        if query.clinic_id is None:  # patients are listed of the asker's own clinic only
            return SearchResult()
        conditions = ["s.clinic_id = p.clinic_id", _SAME_PATIENT]
        params: list[Any] = [query.clinic_id]
        for match in query.matches:
            sql, values = self._condition(match)
            conditions.append(sql)
            params.extend(values)
        latest = (f"(SELECT s.study_json FROM studies s WHERE s.clinic_id = p.clinic_id AND {_SAME_PATIENT} "
                  "ORDER BY s.id DESC LIMIT 1)")
        statement = (f"SELECT p.*, {latest} AS study_json FROM patients p WHERE p.clinic_id = ? "
                     f"AND EXISTS (SELECT 1 FROM studies s WHERE {' AND '.join(conditions)}) "
                     "ORDER BY p.patient_name NULLS LAST, p.patient_id NULLS LAST LIMIT ? OFFSET ?")
        params.extend([query.limit + 1, query.offset])
        with self.db.read() as cur:
            cur.execute(self.db.sql(statement), params)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return SearchResult([dict(zip(names, r)) for r in rows[: query.limit]], len(rows) > query.limit)

    def _condition(self, match: Match) -> tuple[str, list[Any]]:
        attr = BY_KEYWORD[match.keyword]
        column = f"{_TABLE_ALIAS[attr.level]}.{attr.column}"
        if attr.keyword == "ModalitiesInStudy":
            values = match.value if match.kind == "uids" else (match.value,)
            parts, params = [], []
            for value in values:
                sql, p = self.db.wildcard(column, f"*\\{value}\\*")
                parts.append(sql)
                params.extend(p)
            return "(" + " OR ".join(parts) + ")", params
        if attr.vr == "PN":
            return self._person_name(column, match)
        if match.kind == "uids":
            return f"{column} IN ({', '.join('?' * len(match.value))})", list(match.value)
        if match.kind == "range":
            low, high = match.value
            if attr.vr == "TM":
                low = low and (low + _TIME_LOW_PAD[len(low):])
                high = high and (high + _TIME_HIGH_PAD[len(high):])
            parts, params = [], []
            if low:
                parts.append(f"{column} >= ?")
                params.append(low)
            if high:
                parts.append(f"{column} <= ?")
                params.append(high)
            return " AND ".join(parts) or "1=1", params
        if match.kind == "wildcard":
            return self._wildcard(column, match.value)
        if attr.vr in ("IS", "US"):
            return f"{column} = ?", [int(match.value)]
        if attr.vr == "TM":
            # A time matches at the precision it was given ("10" matches 10:xx:xx).
            return self.db.wildcard(column, match.value + "*")
        return f"{column} = ?", [match.value]

    def _wildcard(self, column: str, pattern: str) -> tuple[str, list[Any]]:
        """A DICOM wildcard match, with the range of its literal prefix beside it: the range is
        what lets an index serve the match whatever the dialect and however the pattern is
        bound (SQLite's GLOB and PostgreSQL's LIKE use an index for a literal prefix only)."""
        sql, params = self.db.wildcard(column, pattern)
        prefix = pattern[:min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))]
        if prefix and prefix != pattern and ord(prefix[-1]) < 0x10FFFF:
            sql = f"({column} >= ? AND {column} < ? AND {sql})"
            params = [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), *params]
        return sql, params

    def _person_name(self, column: str, match: Match) -> tuple[str, list[Any]]:
        groups = [f"{column}_alpha", f"{column}_ideo", f"{column}_phon"]
        value = str(match.value).casefold()
        parts: list[str] = []
        params: list[Any] = []
        if match.kind == "fuzzy":
            # Every word of the query starts some component of the name, in any group.
            for word in value.replace("^", " ").replace("=", " ").split():
                any_group = []
                for g in groups:
                    sql, p = self.db.wildcard(f"(' ' || replace({g}, '^', ' '))", f"* {word}*")
                    any_group.append(sql)
                    params.extend(p)
                parts.append("(" + " OR ".join(any_group) + ")")
            return "(" + (" AND ".join(parts) or "1=1") + ")", params
        for g in groups:
            if match.kind == "wildcard":
                sql, p = self._wildcard(g, value)
            else:
                sql, p = f"{g} = ?", [value]
            parts.append(sql)
            params.extend(p)
        return "(" + " OR ".join(parts) + ")", params

    def clinic_ids(self) -> list[str]:
        with self.db.read() as cur:
            cur.execute("SELECT DISTINCT clinic_id FROM studies ORDER BY clinic_id")
            return [r[0] for r in cur.fetchall()]

    def clinics_with_study(self, study_uid: str) -> list[str]:
        with self.db.read() as cur:
            cur.execute(self.db.sql("SELECT clinic_id FROM studies WHERE study_uid = ? ORDER BY clinic_id"), (study_uid,))
            return [r[0] for r in cur.fetchall()]
