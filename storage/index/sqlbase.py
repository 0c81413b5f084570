"""What every SQL index store shares: schema migrations, writes, and query translation.

Subclasses provide connections (``_connect``/``_transaction``), the parameter
style and the wildcard operator of their dialect.
"""
from __future__ import annotations

import contextlib
import logging
from importlib import resources
from typing import Any, Iterator

from gateway.attributes import BY_KEYWORD
from storage.base import (AddResult, AuditQuery, AuditRecord, ForwardItem, InstanceRecord, NewInstance,
                          SearchResult, ShareRecord)
from storage.errors import Conflict
from storage.query import Match, Query

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
    "i.number_of_frames", "i.instance_number", "i.rows", "i.columns", "i.dataset_sha256",
)
_TABLE_ALIAS = {"study": "s", "series": "se", "instance": "i"}
# Stored times keep their own precision ("101500"), so a low bound is padded to HHMMSS
# only: "101500.000000" would sort after a stored "101500" and exclude it.
_TIME_LOW_PAD, _TIME_HIGH_PAD = "000000", "235959.999999"


def _record(row) -> InstanceRecord:
    return InstanceRecord(*row)


FORWARD_COLUMNS = (
    "clinic_id", "destination", "study_uid", "series_uid", "sop_uid", "rule", "id", "status",
    "attempts", "next_attempt_at", "last_error", "created_at", "updated_at", "lease_owner",
)
# Two studies "of one patient" share their PatientID, or both have none.
_SAME_PATIENT = "(s.patient_id = p.patient_id OR (s.patient_id IS NULL AND p.patient_id IS NULL))"


def _forward(row) -> ForwardItem:
    return ForwardItem(**dict(zip(FORWARD_COLUMNS, row)))


SHARE_COLUMNS = ("id", "clinic_id", "study_uid", "series_uid", "target_type", "target_id", "permissions",
                 "created_by", "created_at", "expires_at", "target_clinic", "token_hash", "revoked_at", "revoked_by")
AUDIT_COLUMNS = ("at", "action", "outcome", "user_id", "clinic_id", "resource", "resource_clinic", "client",
                 "request_id", "door", "detail", "id")


def _share(row) -> ShareRecord:
    values = dict(zip(SHARE_COLUMNS, row))
    values["permissions"] = tuple(p for p in values["permissions"].split(",") if p)
    return ShareRecord(**values)


def _audit(row) -> AuditRecord:
    return AuditRecord(**dict(zip(AUDIT_COLUMNS, row)))


class SqlIndexStore:
    dialect = "sql"
    migrations_package = "storage.index.sql"

    # --- provided by subclasses -------------------------------------------------
    def _transaction(self) -> contextlib.AbstractContextManager:
        """A context manager yielding a cursor inside one write transaction."""
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager:
        """A context manager yielding a cursor for reads."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        """Translate ``?`` parameters to the dialect's style."""
        return statement

    def _wildcard(self, expr: str, pattern: str) -> tuple[str, list[Any]]:
        raise NotImplementedError

    def _applied_migrations(self, cur) -> set[str]:
        raise NotImplementedError

    def _lock_migrations(self, cur) -> None:
        """Serialize concurrent :meth:`migrate` calls of several processes, first thing in
        its transaction (SQLite: ``BEGIN IMMEDIATE`` already does)."""

    def _study_order(self, query: Query) -> str:
        """ORDER BY of study-level searches: the study list, newest first, dateless last."""
        return "s.study_date DESC NULLS LAST, s.study_time DESC NULLS LAST, s.id DESC"

    # --- migrations ---------------------------------------------------------------
    def _migration_scripts(self) -> list[tuple[str, str]]:
        folder = resources.files(self.migrations_package).joinpath(self.dialect)
        names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
        return [(n, folder.joinpath(n).read_text(encoding="utf-8")) for n in names]

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._transaction() as cur:
            self._lock_migrations(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            done = self._applied_migrations(cur)
            for name, script in self._migration_scripts():
                if name in done:
                    continue
                logger.info("applying index migration %s", name)
                self._run_script(cur, script)
                cur.execute(self._sql("INSERT INTO schema_migrations (name, applied_at) VALUES (?, CURRENT_TIMESTAMP)"), (name,))
                applied.append(name)
        return applied

    def _run_script(self, cur, script: str) -> None:
        for statement in script.split(";\n"):
            if statement.strip() and not all(
                line.strip().startswith("--") or not line.strip() for line in statement.splitlines()
            ):
                cur.execute(statement)

    # --- writes --------------------------------------------------------------------
    def find_instance(self, clinic_id: str, sop_uid: str) -> InstanceRecord | None:
        with self._read() as cur:
            cur.execute(self._sql(
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
        results: list[AddResult | Conflict] = []
        with self._transaction() as cur:
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
        cur.execute(self._sql(
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
                   "blob_key", "size", "sha256", "dataset_sha256", "frame_index", "header_json")
        values = (series_pk, study_pk, rec.clinic_id, rec.sop_uid, rec.sop_class_uid,
                  *(attrs.get(c) for c in INSTANCE_COLUMNS[2:]), rec.transfer_syntax,
                  rec.blob_key, rec.size, rec.sha256, rec.dataset_sha256, rec.frame_index, new.header_json)
        cur.execute(self._sql(
            f"INSERT INTO instances ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"), values)
        cur.execute(self._sql("UPDATE series SET num_instances = num_instances + 1 WHERE id = ?"), (series_pk,))
        cur.execute(self._sql("UPDATE studies SET num_instances = num_instances + 1 WHERE id = ?"), (study_pk,))
        return AddResult("replaced" if existing else "stored", existing)

    def _upsert_study(self, cur, new: NewInstance) -> int:
        clinic, uid = new.record.clinic_id, new.record.study_uid
        cur.execute(self._sql("SELECT id FROM studies WHERE clinic_id = ? AND study_uid = ?"), (clinic, uid))
        row = cur.fetchone()
        if row:
            return row[0]
        columns = ("clinic_id", *STUDY_COLUMNS, "study_json")
        values = (clinic, uid, *(new.attributes.get(c) or ("" if c.endswith(("_alpha", "_ideo", "_phon")) else None)
                                 for c in STUDY_COLUMNS[1:]), new.study_json)
        cur.execute(self._sql(
            f"INSERT INTO studies ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) RETURNING id"), values)
        return cur.fetchone()[0]

    def _upsert_series(self, cur, new: NewInstance, study_pk: int) -> int:
        clinic, uid = new.record.clinic_id, new.record.series_uid
        cur.execute(self._sql("SELECT id, study_pk FROM series WHERE clinic_id = ? AND series_uid = ?"), (clinic, uid))
        row = cur.fetchone()
        if row:
            if row[1] != study_pk:
                raise Conflict(f"series {uid} is already stored under another study")
            return row[0]
        columns = ("study_pk", "clinic_id", *SERIES_COLUMNS, "series_json")
        values = (study_pk, clinic, uid, *(new.attributes.get(c) for c in SERIES_COLUMNS[1:]), new.series_json)
        cur.execute(self._sql(
            f"INSERT INTO series ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) RETURNING id"), values)
        series_pk = cur.fetchone()[0]
        cur.execute(self._sql("UPDATE studies SET num_series = num_series + 1 WHERE id = ?"), (study_pk,))
        self._refresh_modalities(cur, study_pk)
        return series_pk

    def _refresh_modalities(self, cur, study_pk: int) -> None:
        cur.execute(self._sql(
            "SELECT DISTINCT modality FROM series WHERE study_pk = ? AND modality IS NOT NULL ORDER BY modality"),
            (study_pk,))
        modalities = [r[0] for r in cur.fetchall() if r[0]]
        joined = "\\" + "\\".join(modalities) + "\\" if modalities else ""
        cur.execute(self._sql("UPDATE studies SET modalities = ? WHERE id = ?"), (joined, study_pk))

    def _delete_instances(self, cur, records: list[InstanceRecord]) -> None:
        """Delete instance rows, keep counters true and drop emptied series and studies."""
        touched_series: set[int] = set()
        touched_studies: set[int] = set()
        for rec in records:
            cur.execute(self._sql(
                "DELETE FROM instances WHERE clinic_id = ? AND sop_uid = ? RETURNING series_pk, study_pk"),
                (rec.clinic_id, rec.sop_uid))
            row = cur.fetchone()
            if not row:
                continue
            series_pk, study_pk = row
            cur.execute(self._sql("UPDATE series SET num_instances = num_instances - 1 WHERE id = ?"), (series_pk,))
            cur.execute(self._sql("UPDATE studies SET num_instances = num_instances - 1 WHERE id = ?"), (study_pk,))
            touched_series.add(series_pk)
            touched_studies.add(study_pk)
        for series_pk in touched_series:
            cur.execute(self._sql("DELETE FROM series WHERE id = ? AND num_instances <= 0 RETURNING study_pk"),
                        (series_pk,))
            row = cur.fetchone()
            if row:
                cur.execute(self._sql("UPDATE studies SET num_series = num_series - 1 WHERE id = ?"), (row[0],))
        for study_pk in touched_studies:
            cur.execute(self._sql("DELETE FROM studies WHERE id = ? AND num_instances <= 0"), (study_pk,))
            self._refresh_modalities(cur, study_pk)

    def delete(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None) -> list[InstanceRecord]:
        with self._transaction() as cur:
            where, params = self._scope(clinic_id, study_uid, series_uid, sop_uid)
            cur.execute(self._sql(
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
        with self._read() as cur:
            cur.execute(self._sql(
                f"SELECT {', '.join(RECORD_COLUMNS)} FROM instances i JOIN series se ON se.id = i.series_pk "
                f"JOIN studies s ON s.id = i.study_pk WHERE {where} "
                "ORDER BY se.series_number, se.id, i.instance_number, i.id"), params)
            return [_record(r) for r in cur.fetchall()]

    def instance_headers(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                         sop_uid: str | None = None) -> Iterator[str]:
        where, params = self._scope(clinic_id, study_uid, series_uid, sop_uid)
        with self._read() as cur:
            cur.execute(self._sql(
                "SELECT i.header_json FROM instances i JOIN series se ON se.id = i.series_pk "
                f"JOIN studies s ON s.id = i.study_pk WHERE {where} "
                "ORDER BY se.series_number, se.id, i.instance_number, i.id"), params)
            rows = cur.fetchall()
        for (text,) in rows:
            yield text

    def counts(self, clinic_id: str | None = None) -> dict[str, int]:
        where, params = ("WHERE clinic_id = ?", [clinic_id]) if clinic_id else ("", [])
        result = {}
        with self._read() as cur:
            for name, table in (("patients", "patients"), ("studies", "studies"),
                                ("series", "series"), ("instances", "instances")):
                cur.execute(self._sql(f"SELECT count(*) FROM {table} {where}"), params)
                result[name] = cur.fetchone()[0]
        return result

    # --- search --------------------------------------------------------------------
    def search(self, query: Query) -> SearchResult:
        if query.level == "patient":
            return self._search_patients(query)
        alias = _TABLE_ALIAS[query.level]
        select = ["s.*"]
        from_ = "studies s"
        order = self._study_order(query)
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
        with self._read() as cur:
            cur.execute(self._sql(statement), params)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        truncated = len(rows) > query.limit
        # Columns repeat across joined tables (id, clinic_id, num_instances...):
        # later tables win, so the level's own num_instances is what remains.
        del alias
        return SearchResult([dict(zip(names, r)) for r in rows[: query.limit]], truncated)

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
        with self._read() as cur:
            cur.execute(self._sql(statement), params)
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
                sql, p = self._wildcard(column, f"*\\{value}\\*")
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
            return self._wildcard(column, match.value + "*")
        return f"{column} = ?", [match.value]

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
                    sql, p = self._wildcard(f"(' ' || replace({g}, '^', ' '))", f"* {word}*")
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

    # --- the forward queue ---------------------------------------------------------
    def enqueue_forwards(self, items: list[ForwardItem], *, now_ms: int) -> None:
        if not items:
            return
        with self._transaction() as cur:
            for item in items:
                cur.execute(self._sql(
                    "INSERT INTO forward_queue (clinic_id, destination, rule, study_uid, series_uid, sop_uid, "
                    "status, attempts, next_attempt_at, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) "
                    "ON CONFLICT (clinic_id, destination, sop_uid) DO UPDATE SET rule = excluded.rule, "
                    "study_uid = excluded.study_uid, series_uid = excluded.series_uid, status = 'pending', "
                    "attempts = 0, next_attempt_at = excluded.next_attempt_at, lease_owner = NULL, "
                    "lease_until = NULL, last_error = NULL, updated_at = excluded.updated_at"),
                    (item.clinic_id, item.destination, item.rule, item.study_uid, item.series_uid,
                     item.sop_uid, item.next_attempt_at or now_ms, now_ms, now_ms))

    def claim_forwards(self, owner: str, *, now_ms: int, lease_ms: int, limit: int) -> list[ForwardItem]:
        free = "status = 'pending' AND (lease_until IS NULL OR lease_until < ?)"
        with self._transaction() as cur:
            # The outer condition repeats the inner one: a concurrent claimer that locked the
            # same rows first has leased them, and they no longer qualify.
            cur.execute(self._sql(
                "UPDATE forward_queue SET lease_owner = ?, lease_until = ? WHERE id IN "
                f"(SELECT id FROM forward_queue WHERE {free} AND next_attempt_at <= ? "
                f"ORDER BY next_attempt_at, id LIMIT ?) AND {free} RETURNING {', '.join(FORWARD_COLUMNS)}"),
                (owner, now_ms + lease_ms, now_ms, now_ms, limit, now_ms))
            items = [_forward(r) for r in cur.fetchall()]
        return sorted(items, key=lambda i: (i.next_attempt_at, i.id))

    def finish_forward(self, item_id: int, owner: str) -> bool:
        with self._transaction() as cur:
            cur.execute(self._sql("DELETE FROM forward_queue WHERE id = ? AND lease_owner = ?"), (item_id, owner))
            return cur.rowcount > 0

    def fail_forward(self, item_id: int, owner: str, *, error: str, next_attempt_ms: int,
                     give_up: bool, now_ms: int) -> bool:
        with self._transaction() as cur:
            cur.execute(self._sql(
                "UPDATE forward_queue SET attempts = attempts + 1, status = ?, next_attempt_at = ?, "
                "last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND lease_owner = ?"),
                ("failed" if give_up else "pending", next_attempt_ms, error[:2000], now_ms, item_id, owner))
            return cur.rowcount > 0

    def forward_lease_owners(self) -> list[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT lease_owner FROM forward_queue WHERE lease_owner IS NOT NULL")
            return [r[0] for r in cur.fetchall()]

    def release_forwards(self, owner: str) -> int:
        with self._transaction() as cur:
            cur.execute(self._sql(
                "UPDATE forward_queue SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"), (owner,))
            return cur.rowcount

    def list_forwards(self, *, status: str | None = None, clinic_id: str | None = None,
                      limit: int = 100, offset: int = 0) -> list[ForwardItem]:
        where, params = self._forward_filter(status, clinic_id)
        with self._read() as cur:
            cur.execute(self._sql(
                f"SELECT {', '.join(FORWARD_COLUMNS)} FROM forward_queue {where} ORDER BY id LIMIT ? OFFSET ?"),
                [*params, limit, offset])
            return [_forward(r) for r in cur.fetchall()]

    def retry_forwards(self, *, ids: list[int] | None = None, clinic_id: str | None = None,
                       now_ms: int) -> int:
        where, params = self._forward_filter("failed", clinic_id)
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join('?' * len(ids))})"
            params.extend(ids)
        with self._transaction() as cur:
            cur.execute(self._sql(
                "UPDATE forward_queue SET status = 'pending', attempts = 0, next_attempt_at = ?, "
                f"lease_owner = NULL, lease_until = NULL, updated_at = ? {where}"), [now_ms, now_ms, *params])
            return cur.rowcount

    def forward_counts(self, clinic_id: str | None = None) -> dict[str, int]:
        where, params = self._forward_filter(None, clinic_id)
        counts = {"pending": 0, "failed": 0}
        with self._read() as cur:
            cur.execute(self._sql(f"SELECT status, count(*) FROM forward_queue {where} GROUP BY status"), params)
            for status, count in cur.fetchall():
                counts[status] = count
        return counts

    @staticmethod
    def _forward_filter(status: str | None, clinic_id: str | None) -> tuple[str, list[Any]]:
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if clinic_id is not None:
            where.append("clinic_id = ?")
            params.append(clinic_id)
        return ("WHERE " + " AND ".join(where)) if where else "", params

    # --- shares --------------------------------------------------------------------
    def add_share(self, share: ShareRecord) -> None:
        values = [getattr(share, c) for c in SHARE_COLUMNS]
        values[SHARE_COLUMNS.index("permissions")] = ",".join(share.permissions)
        with self._transaction() as cur:
            cur.execute(self._sql(f"INSERT INTO shares ({', '.join(SHARE_COLUMNS)}) "
                                  f"VALUES ({', '.join('?' * len(SHARE_COLUMNS))})"), values)

    def _shares(self, where: str, params: list[Any], suffix: str = "") -> list[ShareRecord]:
        with self._read() as cur:
            cur.execute(self._sql(f"SELECT {', '.join(SHARE_COLUMNS)} FROM shares {where} {suffix}"), params)
            return [_share(r) for r in cur.fetchall()]

    def get_share(self, share_id: str) -> ShareRecord | None:
        found = self._shares("WHERE id = ?", [share_id])
        return found[0] if found else None

    def share_by_token(self, token_hash: str) -> ShareRecord | None:
        found = self._shares("WHERE token_hash = ?", [token_hash])
        return found[0] if found else None

    def list_shares(self, *, clinic_id: str | None = None, target_type: str | None = None,
                    target_id: str | None = None, active_at: int | None = None, limit: int = 100,
                    offset: int = 0) -> list[ShareRecord]:
        where, params = [], []
        for column, value in (("clinic_id", clinic_id), ("target_type", target_type), ("target_id", target_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if active_at is not None:
            where.append("revoked_at IS NULL AND expires_at > ?")
            params.append(active_at)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._shares(clause, [*params, limit, offset], "ORDER BY created_at DESC, id LIMIT ? OFFSET ?")

    def active_shares(self, *, user_id: str | None, clinic_id: str | None, now_ms: int) -> list[ShareRecord]:
        targets, params = [], []
        if user_id is not None:
            targets.append("(target_type = 'user' AND target_id = ? AND (target_clinic IS NULL OR target_clinic = ?))")
            params.extend([user_id, clinic_id])
        if clinic_id is not None:
            targets.append("(target_type = 'clinic' AND target_id = ?)")
            params.append(clinic_id)
        if not targets:
            return []
        return self._shares(f"WHERE ({' OR '.join(targets)}) AND revoked_at IS NULL AND expires_at > ?",
                            [*params, now_ms], "ORDER BY created_at, id")

    def revoke_share(self, share_id: str, *, by: str, now_ms: int) -> bool:
        with self._transaction() as cur:
            cur.execute(self._sql("UPDATE shares SET revoked_at = ?, revoked_by = ? "
                                  "WHERE id = ? AND revoked_at IS NULL"), (now_ms, by, share_id))
            return cur.rowcount > 0

    def clinics_with_study(self, study_uid: str) -> list[str]:
        with self._read() as cur:
            cur.execute(self._sql("SELECT clinic_id FROM studies WHERE study_uid = ? ORDER BY clinic_id"), (study_uid,))
            return [r[0] for r in cur.fetchall()]

    # --- the audit log ---------------------------------------------------------------
    def append_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        columns = AUDIT_COLUMNS[:-1]  # id is the database's
        with self._transaction() as cur:
            for record in records:
                cur.execute(self._sql(f"INSERT INTO audit_log ({', '.join(columns)}) "
                                      f"VALUES ({', '.join('?' * len(columns))})"),
                            [getattr(record, c) for c in columns])

    def search_audit(self, query: AuditQuery) -> list[AuditRecord]:
        where, params = [], []
        if query.clinic_id is not None:
            where.append("(clinic_id = ? OR resource_clinic = ?)")
            params.extend([query.clinic_id, query.clinic_id])
        for column, value in (("user_id", query.user_id), ("action", query.action), ("outcome", query.outcome)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.resource:
            where.append("substr(resource, 1, ?) = ?")
            params.extend([len(query.resource), query.resource])
        for condition, value in (("at >= ?", query.since_ms), ("at < ?", query.until_ms),
                                 ("id > ?", query.after_id)):
            if value is not None:
                where.append(condition)
                params.append(value)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        order = "id DESC" if query.newest_first else "id"
        with self._read() as cur:
            cur.execute(self._sql(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log {clause} "
                                  f"ORDER BY {order} LIMIT ? OFFSET ?"), [*params, query.limit, query.offset])
            return [_audit(r) for r in cur.fetchall()]
