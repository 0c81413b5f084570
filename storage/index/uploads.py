"""The upload store in SQL (SQLite and PostgreSQL alike): zip uploads of the fast API, their
entries and their event log, in the index database, so that any gateway process can answer
for an upload another one is receiving (listing, resumption, Server-Sent Events)."""
from __future__ import annotations

import json
import logging
from typing import Any, Iterable

from storage.records import Upload, UploadEntry, UploadEvent

logger = logging.getLogger(__name__)

UPLOAD_COLUMNS = ("id", "clinic_id", "created_by", "created_at", "expires_at", "status", "client",
                  "expected_study", "expected_instances", "bytes_received", "parts", "updated_at", "completed_at")
ENTRY_COLUMNS = ("upload_id", "part", "name", "size", "outcome", "sha256", "reason", "code", "sop_uid", "study_uid",
                 "series_uid", "blob_key", "archive_offset", "at", "id")
EVENT_COLUMNS = ("upload_id", "type", "data", "at", "id")


def _upload(row) -> Upload:
    return Upload(**dict(zip(UPLOAD_COLUMNS, row)))


def _entry(row) -> UploadEntry:
    return UploadEntry(**dict(zip(ENTRY_COLUMNS, row)))


def _event(row) -> UploadEvent:
    values = dict(zip(EVENT_COLUMNS, row))
    values["data"] = json.loads(values["data"])
    return UploadEvent(**values)


class SqlUploadStore:
    """:class:`storage.base.UploadStore` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    def create(self, upload: Upload) -> None:
        columns = UPLOAD_COLUMNS
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"INSERT INTO uploads ({', '.join(columns)}) "
                                    f"VALUES ({', '.join('?' * len(columns))})"),
                        [getattr(upload, c) for c in columns])

    def get(self, upload_id: str) -> Upload | None:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(UPLOAD_COLUMNS)} FROM uploads WHERE id = ?"), (upload_id,))
            row = cur.fetchone()
        return _upload(row) if row else None

    def list_uploads(self, clinic_id: str, *, status: str | None = None, limit: int = 100,
                     offset: int = 0) -> list[Upload]:
        where, params = "clinic_id = ?", [clinic_id]
        if status is not None:
            where += " AND status = ?"
            params.append(status)
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(UPLOAD_COLUMNS)} FROM uploads WHERE {where} "
                                    "ORDER BY created_at DESC, id LIMIT ? OFFSET ?"), [*params, limit, offset])
            return [_upload(r) for r in cur.fetchall()]

    def start_part(self, upload_id: str, *, now_ms: int, expires_at: int) -> int | None:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("UPDATE uploads SET parts = parts + 1, updated_at = ?, expires_at = ? "
                                    "WHERE id = ? AND status = 'open' RETURNING parts"),
                        (now_ms, expires_at, upload_id))
            row = cur.fetchone()
        return row[0] if row else None

    def record(self, upload_id: str, *, entries: Iterable[UploadEntry] = (),
               events: Iterable[tuple[str, dict[str, Any]]] = (), received: int = 0, now_ms: int) -> None:
        entry_columns = ENTRY_COLUMNS[:-1]  # id is the database's
        with self.db.transaction() as cur:
            for entry in entries:
                cur.execute(self.db.sql(f"INSERT INTO upload_entries ({', '.join(entry_columns)}) "
                                        f"VALUES ({', '.join('?' * len(entry_columns))})"),
                            [getattr(entry, c) for c in entry_columns])
            for kind, data in events:
                cur.execute(self.db.sql("INSERT INTO upload_events (upload_id, type, data, at) VALUES (?, ?, ?, ?)"),
                            (upload_id, kind, json.dumps(data, separators=(",", ":")), now_ms))
            cur.execute(self.db.sql("UPDATE uploads SET bytes_received = bytes_received + ?, updated_at = ? "
                                    "WHERE id = ?"), (received, now_ms, upload_id))

    def reject_entries(self, upload_id: str, part: int, names: list[str], *, reason: str, code: int) -> int:
        if not names:
            return 0
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(
                "UPDATE upload_entries SET outcome = 'rejected', reason = ?, code = ?, blob_key = NULL "
                f"WHERE upload_id = ? AND part = ? AND name IN ({', '.join('?' * len(names))})"),
                (reason, code, upload_id, part, *names))
            return cur.rowcount

    def entries(self, upload_id: str) -> list[UploadEntry]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(ENTRY_COLUMNS)} FROM upload_entries WHERE upload_id = ? "
                                    "ORDER BY id"), (upload_id,))
            return [_entry(r) for r in cur.fetchall()]

    def events(self, upload_id: str, *, after_id: int = 0, limit: int = 1000) -> list[UploadEvent]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(EVENT_COLUMNS)} FROM upload_events "
                                    "WHERE upload_id = ? AND id > ? ORDER BY id LIMIT ?"), (upload_id, after_id, limit))
            return [_event(r) for r in cur.fetchall()]

    def finish(self, upload_id: str, status: str, *, now_ms: int, events: Iterable[tuple[str, dict]] = ()) -> bool:
        """Move an open upload to ``status`` (complete, expired) with its events, once."""
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("UPDATE uploads SET status = ?, updated_at = ?, completed_at = ? "
                                    "WHERE id = ? AND status = 'open'"),
                        (status, now_ms, now_ms if status == "complete" else None, upload_id))
            if cur.rowcount == 0:
                return False
            for kind, data in events:
                cur.execute(self.db.sql("INSERT INTO upload_events (upload_id, type, data, at) VALUES (?, ?, ?, ?)"),
                            (upload_id, kind, json.dumps(data, separators=(",", ":")), now_ms))
            return True
