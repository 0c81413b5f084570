"""The one job queue, as the core uses it: queue work, look at it, retry what failed.

Work that must not be lost and may take a while runs as *jobs* of the durable queue in the
index database (:class:`storage.base.JobQueue`): forwarding to remote AEs is one kind,
previews and other derived objects are others. Plugins queue jobs from the core's events
(``instance_stored``...) through :meth:`JobService.enqueue`, and provide the
:class:`JobHandler` of each kind they queue (hook ``register_job_handlers``);
:class:`gateway.worker.JobWorker` runs them, in ``gateway dimse``/``gateway worker``
processes on any number of machines.

A handler says how many jobs it takes at once, how long its lease lasts and how it retries
(:class:`RetryPolicy`): exponential backoff, then the dead letter (status ``failed``, kept
with its last error until an administrator retries it).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from gateway import metrics
from gateway.errors import BackendUnavailable
from storage.base import JobQueue
from storage.errors import StorageError
from storage.records import Job

logger = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


def job_summary(job: Job) -> dict:
    """A job as the queue's lists show it: its state, with its payload's keys beside it (a
    forward: destination, study_uid, series_uid, sop_uid, rule). Pending covers running."""
    return {"id": job.id, "clinic_id": job.clinic_id, **job.payload, "status": job.status, "attempts": job.attempts,
            "next_attempt_at": job.next_attempt_at, "last_error": job.last_error, "created_at": job.created_at,
            "updated_at": job.updated_at}


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of a job kind: ``initial`` seconds after the first failure, doubling up to
    ``maximum``; after ``max_attempts`` failed attempts the job goes to the dead letter."""

    initial: float = 5.0
    maximum: float = 600.0
    max_attempts: int = 20

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts + 1``-th failure."""
        return min(self.initial * 2 ** attempts, self.maximum)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


class JobRun:
    """What a handler reports back for the jobs of one claim (all leased to ``owner``).

    Each job ends with :meth:`done` or :meth:`failed`; a job the handler leaves alone (it
    stopped early) is released when the claim ends and runs again soon, anywhere.
    """

    def __init__(self, queue: JobQueue, owner: str, policy: RetryPolicy, lease_ms: int,
                 stopping: Callable[[], bool] = lambda: False):
        self.queue = queue
        self.owner = owner
        self.policy = policy
        self.lease_ms = lease_ms
        self._stopping = stopping
        self._last_beat = time.monotonic()
        self.settled: set[int] = set()

    @property
    def stopping(self) -> bool:
        """The worker is shutting down: finish the current job and return."""
        return self._stopping()

    def done(self, job: Job) -> None:
        self.settled.add(job.id)
        self.queue.finish(job, self.owner)
        metrics.JOBS.labels(job.kind, "done").inc()

    def failed(self, job: Job, error: str, *, permanent: bool = False) -> bool:
        """Count a failed attempt; returns True when the job went to the dead letter."""
        self.settled.add(job.id)
        give_up = permanent or self.policy.exhausted(job.attempts + 1)
        delay = self.policy.delay(job.attempts)
        now = now_ms()
        self.queue.fail(job, self.owner, error=error, next_attempt_ms=now + int(delay * 1000), give_up=give_up,
                        now_ms=now)
        metrics.JOBS.labels(job.kind, "failed" if give_up else "retry").inc()
        if give_up:
            logger.error("%s job %s (%s) failed for good after %d attempt(s): %s", job.kind, job.id, job.key,
                         job.attempts + 1, error)
        else:
            logger.info("%s job %s (%s) failed (attempt %d), next in %.1f s: %s", job.kind, job.id, job.key,
                        job.attempts + 1, delay, error)
        return give_up

    def progress(self, job: Job, progress: dict) -> bool:
        """Record a job's progress (clients may show it) and extend its lease; False when the
        lease was lost (another worker took the job over): stop working on it."""
        self._last_beat = time.monotonic()
        return self.queue.heartbeat(self.owner, now_ms=now_ms(), lease_ms=self.lease_ms, job_id=job.id,
                                    progress=progress) > 0

    def keep_alive(self) -> None:
        """Extend the leases of this claim when a third of the lease has passed (long batches)."""
        if time.monotonic() - self._last_beat > self.lease_ms / 3000:
            self._last_beat = time.monotonic()
            self.queue.heartbeat(self.owner, now_ms=now_ms(), lease_ms=self.lease_ms)


@runtime_checkable
class JobHandler(Protocol):
    """Runs the jobs of one kind (returned by plugins' ``register_job_handlers`` hook)."""

    kind: str
    batch_size: int  # jobs claimed at once
    lease_seconds: float  # how long a claim stays with its worker without a keep-alive
    poll_interval: float  # seconds between two looks at the queue when idle
    retry: RetryPolicy

    def enabled(self) -> bool:
        """Whether this gateway has work of this kind at all (forwarding: rules are set)."""

    def run(self, jobs: list[Job], run: JobRun) -> None:
        """Do the jobs, reporting each through ``run``."""


class JobService:
    """Queue jobs and look at the queue, with store failures as 503s (``BackendUnavailable``).

    In-process workers subscribe (:meth:`on_enqueue`) to start at once on new work instead of
    at their next poll.
    """

    def __init__(self, queue: JobQueue):
        self.queue = queue
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StorageError as exc:
            raise BackendUnavailable(f"job queue unreachable: {exc}") from exc

    def on_enqueue(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def enqueue(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        self._call(self.queue.enqueue, jobs, now_ms=now_ms())
        for callback in list(self._listeners):
            callback()

    def get(self, job_id: int) -> Job | None:
        return self._call(self.queue.get, job_id)

    def list_jobs(self, *, kind: str | None = None, status: str | None = None, clinic_id: str | None = None,
                  key: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        return self._call(self.queue.list_jobs, kind=kind, status=status, clinic_id=clinic_id, key=key, limit=limit,
                          offset=offset)

    def counts(self, *, kind: str | None = None, clinic_id: str | None = None) -> dict[str, int]:
        return self._call(self.queue.counts, kind=kind, clinic_id=clinic_id, now_ms=now_ms())

    def retry(self, *, kind: str | None = None, ids: list[int] | None = None, clinic_id: str | None = None) -> int:
        """Failed jobs (all, or ``ids``) pending again from their first attempt."""
        count = self._call(self.queue.retry, kind=kind, ids=ids, clinic_id=clinic_id, now_ms=now_ms())
        if count:
            for callback in list(self._listeners):
                callback()
        return count
