"""The derived-object records in SQL (SQLite and PostgreSQL alike): the latest version of each
(clinic, series, name)."""
from __future__ import annotations

import json
from typing import Any, Sequence

from storage.records import DerivedObject

COLUMNS = ("clinic_id", "study_uid", "series_uid", "name", "version", "blob_key", "content_type", "size", "info",
           "created_at")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM derived_objects"


def _record(row) -> DerivedObject:
    values = dict(zip(COLUMNS, row))
    values["info"] = json.loads(values["info"])
    return DerivedObject(**values)


class SqlDerivedStore:
    """:class:`storage.base.DerivedStore` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    def put(self, objects: list[DerivedObject]) -> list[DerivedObject]:
        replaced = []
        with self.db.transaction() as cur:
            for obj in objects:
                cur.execute(self.db.sql(f"{_SELECT} WHERE clinic_id = ? AND series_uid = ? AND name = ?"),
                            (obj.clinic_id, obj.series_uid, obj.name))
                replaced.extend(_record(r) for r in cur.fetchall())
                values = [getattr(obj, c) for c in COLUMNS]
                values[COLUMNS.index("info")] = json.dumps(obj.info, separators=(",", ":"))
                cur.execute(self.db.sql(
                    f"INSERT INTO derived_objects ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                    "ON CONFLICT (clinic_id, series_uid, name) DO UPDATE SET study_uid = excluded.study_uid, "
                    "version = excluded.version, blob_key = excluded.blob_key, content_type = excluded.content_type, "
                    "size = excluded.size, info = excluded.info, created_at = excluded.created_at"), values)
        return replaced

    def _select(self, where: str, params: list[Any]) -> list[DerivedObject]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"{_SELECT} WHERE {where} ORDER BY series_uid, name"), params)
            return [_record(r) for r in cur.fetchall()]

    def get(self, clinic_id: str, series_uid: str, name: str) -> DerivedObject | None:
        found = self._select("clinic_id = ? AND series_uid = ? AND name = ?", [clinic_id, series_uid, name])
        return found[0] if found else None

    def for_series(self, clinic_id: str, series_uid: str) -> list[DerivedObject]:
        return self._select("clinic_id = ? AND series_uid = ?", [clinic_id, series_uid])

    def delete(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
               names: Sequence[str] | None = None) -> list[DerivedObject]:
        where, params = ["clinic_id = ?", "study_uid = ?"], [clinic_id, study_uid]
        if series_uid is not None:
            where.append("series_uid = ?")
            params.append(series_uid)
        if names is not None:
            if not names:
                return []
            where.append(f"name IN ({', '.join('?' * len(names))})")
            params.extend(names)
        clause = " AND ".join(where)
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"{_SELECT} WHERE {clause}"), params)
            removed = [_record(r) for r in cur.fetchall()]
            cur.execute(self.db.sql(f"DELETE FROM derived_objects WHERE {clause}"), params)
        return removed
