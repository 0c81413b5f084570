"""The share store in SQL (SQLite and PostgreSQL alike): one row per share, revoked ones kept
as a record; link tokens only as their sha256."""
from __future__ import annotations

import logging
from typing import Any

from storage.records import ShareRecord

logger = logging.getLogger(__name__)

SHARE_COLUMNS = ("id", "clinic_id", "study_uid", "series_uid", "target_type", "target_id", "permissions",
                 "created_by", "created_at", "expires_at", "target_clinic", "token_hash", "revoked_at", "revoked_by")


def _share(row) -> ShareRecord:
    values = dict(zip(SHARE_COLUMNS, row))
    values["permissions"] = tuple(p for p in values["permissions"].split(",") if p)
    return ShareRecord(**values)


class SqlShareStore:
    """:class:`storage.base.ShareStore` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    def add_share(self, share: ShareRecord) -> None:
        values = [getattr(share, c) for c in SHARE_COLUMNS]
        values[SHARE_COLUMNS.index("permissions")] = ",".join(share.permissions)
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"INSERT INTO shares ({', '.join(SHARE_COLUMNS)}) "
                                  f"VALUES ({', '.join('?' * len(SHARE_COLUMNS))})"), values)

    def _shares(self, where: str, params: list[Any], suffix: str = "") -> list[ShareRecord]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(SHARE_COLUMNS)} FROM shares {where} {suffix}"), params)
            return [_share(r) for r in cur.fetchall()]

    def get_share(self, share_id: str) -> ShareRecord | None:
        found = self._shares("WHERE id = ?", [share_id])
        return found[0] if found else None

    def share_by_token(self, token_hash: str) -> ShareRecord | None:
        found = self._shares("WHERE token_hash = ?", [token_hash])
        return found[0] if found else None

    def list_shares(self, *, clinic_id: str | None = None, target_type: str | None = None,
                    target_id: str | None = None, active_at: int | None = None, limit: int = 100,
                    offset: int = 0, study_uid: str | None = None) -> list[ShareRecord]:
        where, params = [], []
        for column, value in (("clinic_id", clinic_id), ("target_type", target_type), ("target_id", target_id),
                              ("study_uid", study_uid)):
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
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("UPDATE shares SET revoked_at = ?, revoked_by = ? "
                                  "WHERE id = ? AND revoked_at IS NULL"), (now_ms, by, share_id))
            return cur.rowcount > 0
