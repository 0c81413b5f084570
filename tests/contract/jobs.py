"""The contract every durable job queue (``backend.jobs``) keeps: leases with expiry, one owner
at a time even with concurrent claimers, retries, the dead letter, the idempotency key,
progress. Times are passed in (milliseconds), so nothing here sleeps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

from gateway.worker import JobWorker
from storage.base import JobQueue
from storage.records import Job
from tests.contract.backend import StoreContract

LEASE = 60_000


def job(key: str, kind: str = "forward", clinic: str = "c1", **payload) -> Job:
    return Job(kind, key, clinic, payload or {"key": key})


def now_ms() -> int:
    return int(time.time() * 1000)


class JobQueueContract(StoreContract):
    """The backend's fixture mixin also gives ``backend_code(backend)``: Python source that
    builds the same backend in another process (for the test that kills a claimer)."""

    kind = "jobs"
    protocol = JobQueue

    # --- claims and leases ------------------------------------------------------------------
    def test_claim_leases_jobs_to_one_owner(self, store):
        store.enqueue([job("a"), job("b")], now_ms=1000)
        claimed = store.claim("w1", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=10)
        assert [j.key for j in claimed] == ["a", "b"]
        assert all(j.lease_owner == "w1" and j.lease_until == 1000 + LEASE and j.attempts == 0 and
                   j.status == "pending" and j.running(2000) for j in claimed)
        assert claimed[0].payload == {"key": "a"} and claimed[0].clinic_id == "c1" and claimed[0].generation == 1
        assert store.claim("w2", kinds=["forward"], now_ms=2000, lease_ms=LEASE, limit=10) == []
        assert store.lease_owners() == ["w1"]

    def test_claim_only_due_jobs_of_the_kinds_asked_oldest_first(self, store):
        store.enqueue([Job("preview", "p1", next_attempt_at=500)], now_ms=100)
        store.enqueue([Job("forward", "later", next_attempt_at=9000), Job("forward", "f2", next_attempt_at=300)],
                      now_ms=100)
        store.enqueue([Job("forward", "f1", next_attempt_at=200)], now_ms=100)
        assert store.claim("w", kinds=["other"], now_ms=1000, lease_ms=LEASE, limit=10) == []
        assert [j.key for j in store.claim("w", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=1)] == ["f1"]
        assert [j.key for j in store.claim("w", kinds=["forward", "preview"], now_ms=1000, lease_ms=LEASE,
                                           limit=10)] == ["f2", "p1"]
        assert store.claim("w", kinds=["forward"], now_ms=8999, lease_ms=LEASE, limit=10) == []  # not due yet
        assert store.claim("w", kinds=[], now_ms=10**12, lease_ms=LEASE, limit=10) == []

    def test_an_expired_lease_is_taken_over_and_counts_as_an_attempt(self, store):
        store.enqueue([job("a")], now_ms=1000)
        store.claim("dead", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=10)
        assert store.claim("w2", kinds=["forward"], now_ms=1000 + LEASE, lease_ms=LEASE, limit=10) == []
        (taken,) = store.claim("w2", kinds=["forward"], now_ms=1001 + LEASE, lease_ms=LEASE, limit=10)
        assert taken.lease_owner == "w2" and taken.attempts == 1 and "dead" in taken.last_error
        assert store.lease_owners() == ["w2"]
        assert not store.finish(taken, "dead")  # the old owner's late success removes nothing
        assert store.finish(taken, "w2")

    def test_concurrent_claimers_never_hold_the_same_job(self, store):
        store.enqueue([job(f"j{i}") for i in range(120)], now_ms=1000)
        claimers, rounds = 6, 4  # 6 × 7 a round: the queue is empty in the third
        barrier = threading.Barrier(claimers)

        def claim(owner: str) -> list[int]:
            got = []
            for _ in range(rounds):
                barrier.wait()  # every round, all claim at the same moment
                got.extend(j.id for j in store.claim(owner, kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=7))
            return got

        with ThreadPoolExecutor(claimers) as pool:
            results = list(pool.map(claim, [f"w{i}" for i in range(claimers)]))
        everything = [i for ids in results for i in ids]
        assert len(everything) == len(set(everything)) == 120
        assert store.lease_owners() == [f"w{i}" for i in range(claimers)]

    def test_heartbeat_extends_leases_and_records_progress(self, store):
        store.enqueue([job("a"), job("b")], now_ms=1000)
        a, b = store.claim("w", kinds=["forward"], now_ms=1000, lease_ms=1000, limit=10)
        assert store.heartbeat("w", now_ms=1500, lease_ms=1000) == 2
        assert store.heartbeat("w", now_ms=1600, lease_ms=1000, job_id=a.id, progress={"done": 3, "of": 10}) == 1
        assert store.heartbeat("other", now_ms=1600, lease_ms=1000) == 0
        assert store.claim("x", kinds=["forward"], now_ms=2400, lease_ms=1000, limit=10) == []  # leases extended
        got = store.get(a.id)
        assert got.progress == {"done": 3, "of": 10} and got.lease_until == 2600
        (taken,) = store.claim("x", kinds=["forward"], now_ms=2550, lease_ms=1000, limit=10)
        assert taken.id == b.id  # b's lease ended at 2500
        assert store.heartbeat("w", now_ms=2560, lease_ms=1000, job_id=b.id) == 0

    # --- finish, fail, dead letter, retry ------------------------------------------------------
    def test_finish_only_by_the_owner(self, store):
        store.enqueue([job("a")], now_ms=1000)
        (claimed,) = store.claim("w", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=10)
        assert not store.finish(claimed, "other")
        assert store.finish(claimed, "w")
        assert store.list_jobs() == [] and store.get(claimed.id) is None

    def test_failure_reschedules_then_gives_up_into_the_dead_letter(self, store):
        store.enqueue([job("a")], now_ms=1000)
        (claimed,) = store.claim("w", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=10)
        assert store.fail(claimed, "w", error="down", next_attempt_ms=5000, give_up=False, now_ms=1000)
        assert store.claim("w", kinds=["forward"], now_ms=4999, lease_ms=LEASE, limit=10) == []
        (again,) = store.claim("w", kinds=["forward"], now_ms=5000, lease_ms=LEASE, limit=10)
        assert again.attempts == 1 and again.last_error == "down"
        assert store.fail(again, "w", error="refused 0xA900", next_attempt_ms=9000, give_up=True, now_ms=5000)
        assert store.claim("w", kinds=["forward"], now_ms=10**12, lease_ms=LEASE, limit=10) == []
        assert store.counts(now_ms=6000) == {"pending": 0, "running": 0, "failed": 1}
        (failed,) = store.list_jobs(status="failed")
        assert (failed.attempts, failed.last_error, failed.lease_owner) == (2, "refused 0xA900", None)
        assert not store.fail(failed, "w", error="x", next_attempt_ms=0, give_up=True, now_ms=6000)  # not leased

    def test_retry_makes_failed_jobs_pending_from_the_first_attempt(self, store):
        store.enqueue([job("a"), job("b"), job("c", kind="preview"), job("d", clinic="c2")], now_ms=1000)
        for claimed in store.claim("w", kinds=["forward", "preview"], now_ms=1000, lease_ms=LEASE, limit=10):
            store.fail(claimed, "w", error="x", next_attempt_ms=0, give_up=True, now_ms=1000)
        first = store.list_jobs(status="failed")[0]
        assert store.retry(ids=[first.id], now_ms=2000) == 1
        assert store.retry(ids=[first.id], now_ms=2000) == 0  # no longer failed
        assert store.retry(ids=[], now_ms=2000) == 0
        assert store.retry(kind="preview", now_ms=2000) == 1
        assert store.retry(clinic_id="c2", now_ms=2000) == 1
        assert store.counts(now_ms=2000) == {"pending": 3, "running": 0, "failed": 1}
        assert store.retry(now_ms=3000) == 1  # every failed one
        assert sorted(j.attempts for j in store.claim("w2", kinds=["forward", "preview"], now_ms=3000,
                                                         lease_ms=LEASE, limit=10)) == [0, 0, 0, 0]

    # --- the idempotency key ----------------------------------------------------------------------
    def test_the_same_key_is_one_job_with_the_latest_payload(self, store):
        store.enqueue([job("a", n=1)], now_ms=1000)
        store.enqueue([job("a", n=2), job("a", kind="preview", n=3), job("a", clinic="c2", n=4)], now_ms=1100)
        jobs = store.list_jobs()
        assert len(jobs) == 3
        (forward,) = [j for j in jobs if j.kind == "forward" and j.clinic_id == "c1"]
        assert forward.payload == {"n": 2} and forward.generation == 2

    def test_queued_again_while_running_runs_again_not_twice_at_once(self, store):
        """An instance replaced while its old version is being sent is sent again, after."""
        store.enqueue([job("a", v=1)], now_ms=1000)
        (claimed,) = store.claim("w1", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=10)
        store.enqueue([job("a", v=2)], now_ms=1500)
        assert store.claim("w2", kinds=["forward"], now_ms=1500, lease_ms=LEASE, limit=10) == []  # w1 holds it
        assert not store.finish(claimed, "w1")  # the old version's success does not remove the new request
        (again,) = store.claim("w2", kinds=["forward"], now_ms=1600, lease_ms=LEASE, limit=10)
        assert again.id == claimed.id and again.attempts == 0 and again.payload == {"v": 2} and again.generation == 2
        assert store.finish(again, "w2")

    def test_queued_again_after_a_failure_starts_from_scratch(self, store):
        store.enqueue([job("a")], now_ms=1000)
        (claimed,) = store.claim("w", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=10)
        store.fail(claimed, "w", error="x", next_attempt_ms=0, give_up=True, now_ms=1000)
        store.enqueue([job("a")], now_ms=2000)
        (again,) = store.list_jobs()
        assert (again.status, again.attempts, again.last_error, again.next_attempt_at) == ("pending", 0, None, 2000)

    # --- release, lists, counts ------------------------------------------------------------------
    def test_release(self, store):
        store.enqueue([job("a"), job("b")], now_ms=1000)
        store.claim("w", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=1)
        store.claim("dead", kinds=["forward"], now_ms=1000, lease_ms=LEASE, limit=1)
        assert store.release("w", now_ms=1100) == 1  # stopping: due again, no attempt counted
        assert store.release("dead", now_ms=1100, error="worker dead died") == 1
        jobs = {j.key: j for j in store.list_jobs()}
        assert (jobs["a"].attempts, jobs["a"].lease_owner) == (0, None)
        assert (jobs["b"].attempts, jobs["b"].last_error) == (1, "worker dead died")
        assert store.lease_owners() == []
        assert len(store.claim("x", kinds=["forward"], now_ms=1100, lease_ms=LEASE, limit=10)) == 2

    def test_list_and_count_filter_by_kind_status_clinic_and_key(self, store):
        store.enqueue([job("a"), job("b", clinic="c2"), job("c", kind="preview")], now_ms=1000)
        store.claim("w", kinds=["preview"], now_ms=1000, lease_ms=LEASE, limit=10)
        assert [j.key for j in store.list_jobs(clinic_id="c2")] == ["b"]
        assert [j.clinic_id for j in store.list_jobs(kind="forward", key="b")] == ["c2"]
        assert store.list_jobs(kind="forward", clinic_id="c1", key="b") == []
        assert [j.key for j in store.list_jobs(kind="forward")] == ["a", "b"]
        assert store.list_jobs(status="failed") == []
        assert [j.key for j in store.list_jobs(limit=1, offset=1)] == ["b"]
        assert store.counts(now_ms=2000) == {"pending": 2, "running": 1, "failed": 0}
        assert store.counts(kind="forward", clinic_id="c1", now_ms=2000) == {"pending": 1, "running": 0, "failed": 0}
        assert store.counts(now_ms=1000 + LEASE + 1)["running"] == 0  # an expired lease runs nowhere
        assert store.get(10**9) is None

    # --- a worker killed with SIGKILL ----------------------------------------------------------
    def test_the_jobs_of_a_killed_worker_are_taken_over(self, backend, store):
        store.enqueue([job(f"k{i}") for i in range(5)], now_ms=now_ms())
        code = textwrap.dedent(f"""
            import os, socket, sys, time
            {self.backend_code(backend)}
            owner = f"{{socket.gethostname()}}:{{os.getpid()}}:1"
            claimed = backend.jobs.claim(owner, kinds=["forward"], now_ms=int(time.time() * 1000),
                                         lease_ms=600_000, limit=3)
            print(len(claimed), flush=True)
            time.sleep(600)
        """)
        claimer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert claimer.stdout.readline().strip() == "3"
        finally:
            os.kill(claimer.pid, signal.SIGKILL)
            claimer.wait(timeout=30)
        # Its leases last ten minutes: nobody else gets those three meanwhile...
        others = store.claim("other", kinds=["forward"], now_ms=now_ms(), lease_ms=LEASE, limit=10)
        assert len(others) == 2
        # ...but a worker of this host sees the process is gone and releases them at once.
        worker = JobWorker(types.SimpleNamespace(jobs=types.SimpleNamespace(queue=store)), [])
        assert worker.release_dead_leases() == 3
        taken = store.claim("other", kinds=["forward"], now_ms=now_ms(), lease_ms=LEASE, limit=10)
        assert len(taken) == 3
        assert all(j.attempts == 1 and f":{claimer.pid}:" in j.last_error for j in taken)
