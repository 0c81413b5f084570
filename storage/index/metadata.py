"""The image metadata store in SQL (:class:`storage.base.MetadataStore`), in the index database
(SQLite or PostgreSQL, schema ``0009_metadata.sql``): the ``sql`` entry point of
``gateway.metadata_stores`` and the default.

Every write is one transaction: the conditional ``UPDATE ... WHERE version = ?`` (or an
``INSERT ... ON CONFLICT DO NOTHING`` for a new record), its history row and its tags. A
write that changes no row met another version: it is rolled back and raises
:class:`storage.errors.VersionConflict` with the record as it is. Under PostgreSQL's READ
COMMITTED the ``UPDATE`` waits for a concurrent writer of the row and re-checks ``version``
on the row it committed; SQLite's ``BEGIN IMMEDIATE`` runs writers one at a time.

The mirrored share state (``share``, ``share_stamp``, ``shared_until``, migration
``0011_metadata_share.sql``) is set by :meth:`SqlMetadataStore.set_share` alone, in columns
that record writes do not name: neither overwrites the other, whatever their order.
"""
from __future__ import annotations

import json
import logging

from storage.errors import ObjectNotFound, VersionConflict
from storage.metadata import (
    MetadataKey,
    MetadataQuery,
    MetadataRecord,
    merge_viewer_state,
    restore_status,
    shared_until,
)

logger = logging.getLogger(__name__)

_KEY = "clinic_id = ? AND study_uid = ? AND series_uid = ? AND sop_uid = ? AND variant = ?"
_COLUMNS = "study_uid, series_uid, sop_uid, variant, version, body, share, share_stamp"
_ORDER = "ORDER BY COALESCE(study_date, '') DESC, study_uid DESC, series_uid DESC, sop_uid DESC, variant DESC"


def _key_params(clinic_id: str, key: MetadataKey) -> list[str]:
    return [clinic_id, key.study_uid, key.series_uid, key.sop_uid, key.variant]


def _dump(record: MetadataRecord) -> str:
    return json.dumps(record.body(), separators=(",", ":"), sort_keys=True)


def _dump_share(share: dict | None) -> str | None:
    return json.dumps(share, separators=(",", ":"), sort_keys=True) if share else None


class SqlMetadataStore:
    """Image metadata in the tables of the index database ``db`` (a
    :class:`storage.index.database.SqlDatabase`, which owns their migration)."""

    def __init__(self, db):
        self.db = db

    @classmethod
    def from_settings(cls, settings, *, index=None) -> "SqlMetadataStore":
        from storage.index.database import SqlDatabase

        if not isinstance(index, SqlDatabase):
            raise ValueError("storage.metadata_backend 'sql' keeps the metadata in the index database, which must "
                             f"be SQL (storage.index_backend is {settings['storage.index_backend']!r})")
        return cls(index)

    # --- reads ---------------------------------------------------------------------------
    def _record(self, clinic_id, row) -> MetadataRecord:
        study, series, sop, variant, version, body, *share = row
        return MetadataRecord.from_body(clinic_id, MetadataKey(study, series, sop, variant), version,
                                        json.loads(body), share=json.loads(share[0]) if share and share[0] else None,
                                        share_stamp=share[1] if share else 0)

    def _get(self, cur, clinic_id: str, key: MetadataKey) -> MetadataRecord | None:
        cur.execute(self.db.sql(f"SELECT {_COLUMNS} FROM metadata_records WHERE {_KEY}"), _key_params(clinic_id, key))
        row = cur.fetchone()
        return self._record(clinic_id, row) if row else None

    def get(self, clinic_id: str, key: MetadataKey) -> MetadataRecord | None:
        with self.db.read() as cur:
            return self._get(cur, clinic_id, key)

    # --- writes --------------------------------------------------------------------------
    def _write(self, cur, record: MetadataRecord, expected_version: int | None) -> MetadataRecord:
        params = _key_params(record.clinic_id, record.key)
        new = record.next_version(1 if expected_version is None else expected_version + 1)
        body = _dump(new)
        if expected_version is None:
            cur.execute(self.db.sql(
                "INSERT INTO metadata_records (clinic_id, study_uid, series_uid, sop_uid, variant, version, "
                "patient_id, study_date, updated_at, body) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING"),
                [*params, new.patient_id, new.study_date, new.updated_at, body])
        else:
            cur.execute(self.db.sql(
                "UPDATE metadata_records SET version = ?, patient_id = ?, study_date = ?, updated_at = ?, body = ? "
                f"WHERE {_KEY} AND version = ?"),
                [new.version, new.patient_id, new.study_date, new.updated_at, body, *params, expected_version])
        if cur.rowcount != 1:
            current = self._get(cur, record.clinic_id, record.key)
            raise VersionConflict(f"{record.key.object_key}: expected version {expected_version}, found "
                                  f"{current.version if current else 'none'}", current)
        cur.execute(self.db.sql("INSERT INTO metadata_history (clinic_id, study_uid, series_uid, sop_uid, variant, "
                                "version, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                    [*params, new.version, new.updated_at, body])
        cur.execute(self.db.sql(f"DELETE FROM metadata_tags WHERE {_KEY}"), params)
        for tag in dict.fromkeys(new.tags):
            cur.execute(self.db.sql("INSERT INTO metadata_tags (clinic_id, tag, study_uid, series_uid, sop_uid, "
                                    "variant) VALUES (?, ?, ?, ?, ?, ?)"), [params[0], tag, *params[1:]])
        return new

    def put(self, record: MetadataRecord, *, expected_version: int | None) -> MetadataRecord:
        with self.db.transaction() as cur:
            return self._write(cur, record, expected_version)

    def patch_viewer_state(self, clinic_id: str, key: MetadataKey, changes: dict, *, expected_version: int,
                           updated_by: str, now_ms: int) -> MetadataRecord:
        with self.db.transaction() as cur:
            current = self._get(cur, clinic_id, key)
            if current is None:
                raise ObjectNotFound(key.object_key)
            if current.version != expected_version:
                raise VersionConflict(f"{key.object_key}: expected version {expected_version}, found "
                                      f"{current.version}", current)
            current.viewer_state = merge_viewer_state(current.viewer_state, changes)
            current.updated_at, current.updated_by = now_ms, updated_by
            return self._write(cur, current, expected_version)  # still conditional on the version

    # --- search, history, delete ---------------------------------------------------------------
    def search(self, query: MetadataQuery) -> list[MetadataRecord]:
        where, params = ["clinic_id = ?"], [query.clinic_id]
        for column, value in (("study_uid", query.study_uid), ("series_uid", query.series_uid),
                              ("patient_id", query.patient_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.date_from is not None:
            where.append("study_date >= ?")
            params.append(query.date_from)
        if query.date_to is not None:
            where.append("study_date <= ?")
            params.append(query.date_to)
        if query.tag is not None:
            where.append("EXISTS (SELECT 1 FROM metadata_tags t WHERE t.clinic_id = r.clinic_id AND t.tag = ? "
                         "AND t.study_uid = r.study_uid AND t.series_uid = r.series_uid AND t.sop_uid = r.sop_uid "
                         "AND t.variant = r.variant)")
            params.append(query.tag)
        if query.shared is not None:
            where.append("shared_until > ?" if query.shared else "(shared_until IS NULL OR shared_until <= ?)")
            params.append(query.now_ms)
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {_COLUMNS} "
                                    f"FROM metadata_records r WHERE {' AND '.join(where)} {_ORDER} LIMIT ? OFFSET ?"),
                        [*params, query.limit, query.offset])
            return [self._record(query.clinic_id, row) for row in cur.fetchall()]

    def history(self, clinic_id: str, key: MetadataKey, *, limit: int = 100,
                before_version: int | None = None) -> list[MetadataRecord]:
        where, params = _KEY, _key_params(clinic_id, key)
        if before_version is not None:
            where += " AND version < ?"
            params.append(before_version)
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT study_uid, series_uid, sop_uid, variant, version, body "
                                    f"FROM metadata_history WHERE {where} ORDER BY version DESC LIMIT ?"),
                        [*params, limit])
            return [self._record(clinic_id, row) for row in cur.fetchall()]

    def restore(self, versions: list[MetadataRecord]) -> str:
        last = versions[-1]
        params = _key_params(last.clinic_id, last.key)
        with self.db.transaction() as cur:
            current = self._get(cur, last.clinic_id, last.key)
            status = restore_status(current, last)
            if status != "already there":
                have = current.version if current else 0
                for version in versions:
                    if version.version > have:
                        cur.execute(self.db.sql(
                            "INSERT INTO metadata_history (clinic_id, study_uid, series_uid, sop_uid, variant, "
                            "version, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                            [*params, version.version, version.updated_at, _dump(version)])
                if current is None:
                    cur.execute(self.db.sql(
                        "INSERT INTO metadata_records (clinic_id, study_uid, series_uid, sop_uid, variant, version, "
                        "patient_id, study_date, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                        [*params, last.version, last.patient_id, last.study_date, last.updated_at, _dump(last)])
                else:
                    cur.execute(self.db.sql(
                        "UPDATE metadata_records SET version = ?, patient_id = ?, study_date = ?, updated_at = ?, "
                        f"body = ? WHERE {_KEY} AND version = ?"),
                        [last.version, last.patient_id, last.study_date, last.updated_at, _dump(last), *params,
                         current.version])
                cur.execute(self.db.sql(f"DELETE FROM metadata_tags WHERE {_KEY}"), params)
                for tag in dict.fromkeys(last.tags):
                    cur.execute(self.db.sql("INSERT INTO metadata_tags (clinic_id, tag, study_uid, series_uid, "
                                            "sop_uid, variant) VALUES (?, ?, ?, ?, ?, ?)"),
                                [params[0], tag, *params[1:]])
            cur.execute(self.db.sql(f"UPDATE metadata_records SET share = ?, shared_until = ?, share_stamp = ? "
                                    f"WHERE {_KEY} AND share_stamp <= ?"),
                        [_dump_share(last.share), last.shared_until, last.share_stamp, *params, last.share_stamp])
        return status

    def set_share(self, clinic_id: str, study_uid: str, series_uid: str, share: dict | None, *, stamp: int) -> int:
        text = _dump_share(share)
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(
                "UPDATE metadata_records SET share = ?, shared_until = ?, share_stamp = ? "
                "WHERE clinic_id = ? AND study_uid = ? AND series_uid = ? AND share_stamp <= ?"),
                [text, shared_until(share), stamp, clinic_id, study_uid, series_uid, stamp])
            return cur.rowcount

    def delete_records(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                       sop_uid: str | None = None) -> int:
        if sop_uid is not None and series_uid is None:
            raise ValueError("an instance is deleted within its series: give series_uid too")
        where, params = ["clinic_id = ?", "study_uid = ?"], [clinic_id, study_uid]
        for column, value in (("series_uid", series_uid), ("sop_uid", sop_uid)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        condition = " AND ".join(where)
        with self.db.transaction() as cur:
            for table in ("metadata_tags", "metadata_history"):
                cur.execute(self.db.sql(f"DELETE FROM {table} WHERE {condition}"), params)
            cur.execute(self.db.sql(f"DELETE FROM metadata_records WHERE {condition}"), params)
            return cur.rowcount

    def ping(self) -> None:
        self.db.ping()
