"""The job worker: runs the durable queue's jobs with the handlers plugins register.

Run by ``gateway worker`` (any kinds, anywhere) and by ``gateway dimse`` beside the
listener (the embedded default, started by ``gateway serve``). Any number of workers on any
number of machines share one queue: each claim is a lease (``host:pid:n``), so a job runs in
one worker at a time; what a worker leaves unfinished when it stops is released at once,
and what a killed worker held is taken over when its lease expires, or at once by a worker
on the same host that sees the process is gone.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from typing import Iterable

from gateway import metrics
from gateway.services.jobs import JobHandler, JobRun, now_ms

logger = logging.getLogger(__name__)

# How often leases of dead processes on this host are looked for (seconds).
SWEEP_INTERVAL = 5.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    # A killed process whose parent died too may stay a zombie until something reaps it
    # (in a container, maybe never): it answers signal 0 but holds nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class JobWorker:
    """Claims due jobs of its handlers' kinds and runs them, on ``threads`` threads."""

    def __init__(self, services, handlers: Iterable[JobHandler], *, threads: int = 1):
        self.services = services
        self.queue = services.jobs.queue
        self.handlers = [h for h in handlers if h.enabled()]
        # Idle, the queue is looked at as often as the most impatient kind asks.
        self.poll = min((h.poll_interval for h in self.handlers), default=1.0)
        self.threads = max(1, threads)
        self.host = socket.gethostname()
        self.owner_prefix = f"{self.host}:{os.getpid()}"
        self._claims = itertools.count(1)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_sweep = 0.0
        self._sweep_lock = threading.Lock()

    @classmethod
    def for_services(cls, services, *, kinds: Iterable[str] | None = None) -> "JobWorker":
        """A worker with every handler the plugins register (or those of ``kinds``)."""
        handlers = [h for group in services.pm.hook.register_job_handlers(services=services) for h in group]
        if kinds is not None:
            wanted = set(kinds)
            unknown = wanted - {h.kind for h in handlers}
            if unknown:
                raise ValueError(f"no job handler for kind(s) {', '.join(sorted(unknown))}; known: "
                                 f"{', '.join(sorted(h.kind for h in handlers)) or 'none'}")
            handlers = [h for h in handlers if h.kind in wanted]
        return cls(services, handlers, threads=services.settings["worker.threads"])

    @property
    def kinds(self) -> list[str]:
        return [h.kind for h in self.handlers]

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> "JobWorker":
        self.release_dead_leases()
        self.services.jobs.on_enqueue(self.wake)
        for n in range(self.threads):
            thread = threading.Thread(target=self.run, name=f"job-worker-{n + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("job worker started: %s (%d thread(s))", ", ".join(self.kinds) or "no kinds", self.threads)
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def release_dead_leases(self) -> int:
        """Release the leases of workers of this host whose process is gone (a crash, a kill);
        each job counts the lost run as a failed attempt."""
        released = 0
        for owner in self.queue.lease_owners():
            parts = owner.rsplit(":", 2)  # host:pid:claim
            if len(parts) != 3 or parts[0] != self.host or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid != os.getpid() and not pid_alive(pid):
                released += self.queue.release(owner, now_ms=now_ms(), error=f"worker {owner} died")
        if released:
            logger.info("released %d job(s) leased by workers that are gone", released)
        return released

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sweep_now_and_then()
                claimed = self.run_once()
            except Exception:
                logger.exception("job worker: queue unavailable; retrying")
                claimed = 0
                self._stop.wait(max(self.poll, 5))
            if not claimed:
                self._wake.wait(self.poll)
                self._wake.clear()

    def _sweep_now_and_then(self) -> None:
        # A process killed just before this one started was still alive at start.
        with self._sweep_lock:
            if time.monotonic() - self._last_sweep < max(self.poll, SWEEP_INTERVAL):
                return
            self._last_sweep = time.monotonic()
        self.release_dead_leases()

    # --- one round -----------------------------------------------------------------------
    def run_once(self) -> int:
        """One claim per handler, each run to its end; return how many jobs were claimed."""
        claimed = 0
        for handler in self.handlers:
            if self._stop.is_set():
                break
            claimed += self._run_handler(handler)
        return claimed

    def _run_handler(self, handler: JobHandler) -> int:
        owner = f"{self.owner_prefix}:{next(self._claims)}"
        lease_ms = int(handler.lease_seconds * 1000)
        jobs = self.queue.claim(owner, kinds=[handler.kind], now_ms=now_ms(), lease_ms=lease_ms,
                                limit=handler.batch_size)
        if not jobs:
            return 0
        run = JobRun(self.queue, owner, handler.retry, lease_ms, stopping=self._stop.is_set)
        live = []
        for job in jobs:
            if handler.retry.exhausted(job.attempts):  # its runs were lost (the worker died) too often
                run.failed(job, job.last_error or "too many attempts", permanent=True)
            else:
                live.append(job)
        started = time.monotonic()
        try:
            if live:
                handler.run(live, run)
        except Exception as exc:  # a handler's bug must not lose or stall the jobs
            logger.exception("%s handler failed", handler.kind)
            for job in live:
                if job.id not in run.settled:
                    run.failed(job, f"{type(exc).__name__}: {exc}")
        finally:
            self.queue.release(owner, now_ms=now_ms())  # what was not settled (stopping) is due again
            if live:
                metrics.JOB_BATCH_DURATION.labels(handler.kind).observe(time.monotonic() - started)
        return len(jobs)
