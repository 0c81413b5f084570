"""Prometheus metrics (``prometheus-client``) of every process of a gateway: the gunicorn
workers, the DIMSE listener and the job workers beside it.

``gateway serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a folder of its own before any
process starts (``prepare_multiprocess``): every process writes its samples there and
``GET /metrics`` (:func:`exposition`) adds them up, so one scrape sees the whole gateway
whichever worker answers it. A process started otherwise (``gateway worker``, tests in
process) keeps its metrics in its own registry.

What is measured where: HTTP requests, latencies and bytes in the app's access line
(:func:`observe_request`); instances by door, outcome and FailureReason in ingest; DIMSE
associations and every response status in the listener; job outcomes and durations in the
job worker; queue depth, the age of the oldest pending job and readiness at scrape time.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("gateway_http_requests_total", "HTTP requests answered",
                   ["door", "method", "route", "status"])
TTFB = Histogram("gateway_http_time_to_first_byte_seconds", "time until the response headers were ready",
                 ["door", "route"], buckets=_LATENCY)
DURATION = Histogram("gateway_http_request_duration_seconds", "time until the last byte was sent",
                     ["door", "route"], buckets=_LATENCY)
BYTES_IN = Counter("gateway_http_received_bytes_total", "request body bytes received", ["door"])
BYTES_OUT = Counter("gateway_http_sent_bytes_total", "response body bytes sent", ["door"])
INSTANCES = Counter("gateway_instances_total",
                    "instances through ingest by door, outcome (stored, duplicate, replaced, failed) and "
                    "FailureReason (failed only)", ["door", "outcome", "reason"])
DIMSE_ASSOCIATIONS = Counter("gateway_dimse_associations_total", "associations by how they ended up",
                             ["outcome"])
DIMSE_RESPONSES = Counter("gateway_dimse_responses_total", "DIMSE responses sent, by operation and status",
                          ["operation", "status"])
JOBS = Counter("gateway_jobs_total", "job attempts by kind and outcome (done, retry, failed: dead-lettered)",
               ["kind", "outcome"])
STORE_LATENCY = Histogram("gateway_store_operation_seconds", "time of a call of the index or blob store",
                          ["store", "operation"], buckets=_LATENCY)
STORE_ERRORS = Counter("gateway_store_errors_total", "calls of the index or blob store that raised",
                       ["store", "operation"])
JOB_BATCH_DURATION = Histogram("gateway_job_batch_duration_seconds", "time a handler took for one claimed batch",
                               ["kind"], buckets=_LATENCY)


class Timed:
    """A store whose every public call is timed (and its failures counted) by operation name;
    everything else passes through."""

    def __init__(self, store: str, target, *, answers: tuple[type[BaseException], ...] = ()):
        # ``answers``: exceptions that are an answer of the store, not a failure (a version
        # conflict of the metadata store): timed, not counted as errors.
        self._store, self._target, self._answers = store, target, answers

    def __getattr__(self, name: str):
        attr = getattr(self._target, name)
        if name.startswith("_") or not callable(attr):
            return attr
        store, answers = self._store, self._answers

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            except answers:
                raise
            except Exception:
                STORE_ERRORS.labels(store, name).inc()
                raise
            finally:
                STORE_LATENCY.labels(store, name).observe(time.perf_counter() - started)

        timed.__name__ = name
        return timed

    def __repr__(self) -> str:
        return f"Timed({self._store}, {self._target!r})"


def prepare_multiprocess(data_dir: str | os.PathLike) -> Path:
    """A fresh folder for the samples of this gateway's processes (call before any starts)."""
    from prometheus_client import values

    folder = Path(data_dir) / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    # prometheus-client picks its value class when it is imported, which the CLI did already;
    # every metric here has labels, so no value exists yet and the new class applies to all.
    values.ValueClass = values.get_value_class()
    return folder


def process_exited(pid: int) -> None:
    """gunicorn's child_exit: the live gauges of a dead worker no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def observe_request(fields: dict) -> None:
    door, route = fields["door"], fields["route"] or "(no route)"
    REQUESTS.labels(door, fields["method"], route, str(fields["status"])).inc()
    TTFB.labels(door, route).observe(fields["ttfb_ms"] / 1000)
    DURATION.labels(door, route).observe(fields["total_ms"] / 1000)
    if fields.get("bytes_in"):
        BYTES_IN.labels(door).inc(fields["bytes_in"])
    BYTES_OUT.labels(door).inc(fields.get("bytes") or 0)


def count_instance(door: str, outcome: str, reason: int | None = None) -> None:
    INSTANCES.labels(door or "other", outcome, f"0x{reason:04X}" if reason is not None else "").inc()


class _ScrapeTime:
    """Gauges read when scraped: the job queue of the index store, and readiness."""

    def __init__(self, services, kinds: list[str], checks):
        self.services, self.kinds, self.checks = services, kinds, checks

    def collect(self):
        depth = GaugeMetricFamily("gateway_jobs", "jobs in the queue by kind and status", labels=["kind", "status"])
        oldest = GaugeMetricFamily("gateway_job_oldest_pending_age_seconds",
                                   "age of the oldest pending job, by kind", labels=["kind"])
        try:
            for kind in ["all", *self.kinds]:  # all: every kind, those without a handler here too
                of = None if kind == "all" else kind
                for status, n in self.services.jobs.counts(kind=of).items():
                    depth.add_metric([kind, status], n)
                first = self.services.jobs.list_jobs(kind=of, status="pending", limit=1)
                age = (time.time() * 1000 - first[0].created_at) / 1000 if first and first[0].created_at else 0.0
                oldest.add_metric([kind], max(age, 0.0))
        except Exception:  # noqa: BLE001 - an unreachable store: readiness says so below
            pass
        yield depth
        yield oldest
        ready = GaugeMetricFamily("gateway_ready", "1 when the check passes (as /readyz)", labels=["check"])
        for check, state in self.checks().items():
            ready.add_metric([check], 1.0 if state == "ok" else 0.0)
        yield ready


def exposition(services, kinds: list[str], checks) -> tuple[bytes, str]:
    """The Prometheus text of the whole gateway (every process, or this one alone) and its
    content type."""
    from prometheus_client import REGISTRY, multiprocess

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_ScrapeTime(services, kinds, checks))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    scrape_time = CollectorRegistry()
    scrape_time.register(_ScrapeTime(services, kinds, checks))
    return generate_latest(REGISTRY) + generate_latest(scrape_time), CONTENT_TYPE_LATEST
