"""The audit log in SQL (SQLite and PostgreSQL alike): append-only; the schema's triggers
refuse updates and deletes."""
from __future__ import annotations

import logging

from storage.records import AuditQuery, AuditRecord

logger = logging.getLogger(__name__)

AUDIT_COLUMNS = ("at", "action", "outcome", "user_id", "clinic_id", "resource", "resource_clinic", "client",
                 "request_id", "door", "detail", "id")


def _audit(row) -> AuditRecord:
    return AuditRecord(**dict(zip(AUDIT_COLUMNS, row)))


class SqlAuditLog:
    """:class:`storage.base.AuditLog` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    def append(self, records: list[AuditRecord], *, durable: bool = True) -> None:
        if not records:
            return
        columns = AUDIT_COLUMNS[:-1]  # id is the database's
        row = f"({', '.join('?' * len(columns))})"
        with self.db.transaction(durable=durable) as cur:
            for start in range(0, len(records), 500):  # one statement per 500 records: one round trip
                batch = records[start:start + 500]
                cur.execute(self.db.sql(f"INSERT INTO audit_log ({', '.join(columns)}) VALUES "
                                        + ", ".join([row] * len(batch))),
                            [getattr(record, c) for record in batch for c in columns])

    def search(self, query: AuditQuery) -> list[AuditRecord]:
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
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log {clause} "
                                  f"ORDER BY {order} LIMIT ? OFFSET ?"), [*params, query.limit, query.offset])
            return [_audit(r) for r in cur.fetchall()]
