"""The durable job queue in SQL (SQLite and PostgreSQL alike), in the index database.

Claims are one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) AND <still claimable>``: on
SQLite the write transaction (``BEGIN IMMEDIATE``) serializes claimers; on PostgreSQL the
inner selection skips rows other claimers have locked (``FOR UPDATE SKIP LOCKED``, the
database's ``claim_lock``), and the outer condition repeats the inner one, so a row that
another claimer leased first no longer qualifies. Either way no job is leased to two
owners at once.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from storage.records import Job

logger = logging.getLogger(__name__)

JOB_COLUMNS = ("kind", "key", "clinic_id", "payload", "next_attempt_at", "id", "status", "attempts", "generation",
               "lease_owner", "lease_until", "progress", "last_error", "created_at", "updated_at")
_ERROR_MAX = 2000
# Due and not held by a live lease.
_CLAIMABLE = "status = 'pending' AND (lease_until IS NULL OR lease_until < ?)"


def _job(row) -> Job:
    values = dict(zip(JOB_COLUMNS, row))
    values["payload"] = json.loads(values["payload"] or "{}")
    values["progress"] = json.loads(values["progress"]) if values["progress"] else None
    return Job(**values)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class SqlJobQueue:
    """:class:`storage.base.JobQueue` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    def enqueue(self, jobs: list[Job], *, now_ms: int) -> None:
        if not jobs:
            return
        with self.db.transaction() as cur:
            for job in jobs:
                cur.execute(self.db.sql(
                    "INSERT INTO jobs (kind, clinic_id, key, payload, status, attempts, generation, next_attempt_at, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, 1, ?, ?, ?) "
                    "ON CONFLICT (kind, clinic_id, key) DO UPDATE SET payload = excluded.payload, status = 'pending', "
                    "attempts = 0, generation = jobs.generation + 1, next_attempt_at = excluded.next_attempt_at, "
                    "last_error = NULL, progress = NULL, updated_at = excluded.updated_at"),
                    (job.kind, job.clinic_id, job.key, _dumps(job.payload), job.next_attempt_at or now_ms,
                     now_ms, now_ms))

    def claim(self, owner: str, *, kinds: Sequence[str], now_ms: int, lease_ms: int, limit: int) -> list[Job]:
        if not kinds or limit <= 0:
            return []
        marks = ", ".join("?" * len(kinds))
        with self.db.transaction() as cur:
            # A lease that expired belonged to a worker that died mid-run: that run counts as
            # a failed attempt (so a job that kills its workers ends in the dead letter).
            cur.execute(self.db.sql(
                "UPDATE jobs SET lease_owner = ?, lease_until = ?, updated_at = ?, "
                "attempts = attempts + CASE WHEN lease_owner IS NULL THEN 0 ELSE 1 END, "
                "last_error = CASE WHEN lease_owner IS NULL THEN last_error "
                "ELSE 'the lease of ' || lease_owner || ' expired' END "
                "WHERE " + self.db.id_in(f"SELECT id FROM jobs WHERE kind IN ({marks}) AND {_CLAIMABLE} "
                                         f"AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
                                         f"{self.db.claim_lock}") + f" AND {_CLAIMABLE} "
                f"RETURNING {', '.join(JOB_COLUMNS)}"),
                (owner, now_ms + lease_ms, now_ms, *kinds, now_ms, now_ms, limit, now_ms))
            jobs = [_job(r) for r in cur.fetchall()]
        return sorted(jobs, key=lambda j: (j.next_attempt_at, j.id))

    def heartbeat(self, owner: str, *, now_ms: int, lease_ms: int, job_id: int | None = None,
                  progress: dict | None = None) -> int:
        sets, params = ["lease_until = ?", "updated_at = ?"], [now_ms + lease_ms, now_ms]
        if progress is not None:
            sets.append("progress = ?")
            params.append(_dumps(progress))
        where, values = "lease_owner = ?", [owner]
        if job_id is not None:
            where += " AND id = ?"
            values.append(job_id)
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"UPDATE jobs SET {', '.join(sets)} WHERE {where}"), [*params, *values])
            return cur.rowcount

    def _release_requeued(self, cur, job: Job, owner: str) -> bool:
        """After a finish or fail that did not match ``job.generation``: the job was queued
        again meanwhile; drop the lease so that it runs again now."""
        cur.execute(self.db.sql("UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?"),
                    (job.id, owner))
        return False

    def finish(self, job: Job, owner: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("DELETE FROM jobs WHERE id = ? AND lease_owner = ? AND generation = ?"),
                        (job.id, owner, job.generation))
            if cur.rowcount > 0:
                return True
            return self._release_requeued(cur, job, owner)

    def fail(self, job: Job, owner: str, *, error: str, next_attempt_ms: int, give_up: bool, now_ms: int) -> bool:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(
                "UPDATE jobs SET attempts = attempts + 1, status = ?, next_attempt_at = ?, last_error = ?, "
                "lease_owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND lease_owner = ? AND generation = ?"),
                ("failed" if give_up else "pending", next_attempt_ms, error[:_ERROR_MAX], now_ms, job.id, owner,
                 job.generation))
            if cur.rowcount > 0:
                return True
            return self._release_requeued(cur, job, owner)

    def release(self, owner: str, *, now_ms: int, error: str | None = None) -> int:
        with self.db.transaction() as cur:
            if error is None:
                cur.execute(self.db.sql("UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"),
                            (owner,))
            else:
                cur.execute(self.db.sql(
                    "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, attempts = attempts + 1, "
                    "last_error = ?, updated_at = ? WHERE lease_owner = ?"), (error[:_ERROR_MAX], now_ms, owner))
            return cur.rowcount

    def lease_owners(self) -> list[str]:
        with self.db.read() as cur:
            cur.execute("SELECT DISTINCT lease_owner FROM jobs WHERE lease_owner IS NOT NULL ORDER BY lease_owner")
            return [r[0] for r in cur.fetchall()]

    def get(self, job_id: int) -> Job | None:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE id = ?"), (job_id,))
            row = cur.fetchone()
        return _job(row) if row else None

    @staticmethod
    def _filter(kind: str | None, status: str | None, clinic_id: str | None,
                key: str | None = None) -> tuple[str, list[Any]]:
        where, params = [], []
        for column, value in (("kind", kind), ("status", status), ("clinic_id", clinic_id), ("key", key)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return ("WHERE " + " AND ".join(where)) if where else "", params

    def list_jobs(self, *, kind: str | None = None, status: str | None = None, clinic_id: str | None = None,
                  key: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        where, params = self._filter(kind, status, clinic_id, key)
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs {where} ORDER BY id LIMIT ? OFFSET ?"),
                        [*params, limit, offset])
            return [_job(r) for r in cur.fetchall()]

    def retry(self, *, kind: str | None = None, ids: list[int] | None = None, clinic_id: str | None = None,
              now_ms: int) -> int:
        where, params = self._filter(kind, "failed", clinic_id)
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join('?' * len(ids))})"
            params.extend(ids)
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(
                "UPDATE jobs SET status = 'pending', attempts = 0, next_attempt_at = ?, lease_owner = NULL, "
                f"lease_until = NULL, updated_at = ? {where}"), [now_ms, now_ms, *params])
            return cur.rowcount

    def counts(self, *, kind: str | None = None, clinic_id: str | None = None, now_ms: int) -> dict[str, int]:
        where, params = self._filter(kind, None, clinic_id)
        counts = {"pending": 0, "running": 0, "failed": 0}
        with self.db.read() as cur:
            cur.execute(self.db.sql(
                "SELECT CASE WHEN status = 'pending' AND lease_until >= ? THEN 'running' ELSE status END AS state, "
                f"count(*) FROM jobs {where} GROUP BY 1"), [now_ms, *params])
            for state, count in cur.fetchall():
                counts[state] = counts.get(state, 0) + count
        return counts
