"""The ``previews`` job: every derived object of a series, made by the generator plugins.

Queued (:func:`gateway.services.derived.derive_job`, key ``{study}/{series}``):

- on ``instance_stored``, due ``previews.settle_seconds`` later; each further instance of the
  series moves the due time (a series arriving instance by instance through STOW-RS or
  C-STORE is complete once it has been quiet that long). A process re-queues a series at most
  once per second, so a 600-instance STOW costs a handful of queue writes, not 600;
- on ``upload_completed``, due at once, for each series of the upload;
- by a reader asking for an object that is not made yet.

A run reads the series from the index, orders its slices along the slice axis, computes the
version (the instances' content and the generators' parameters) and returns at once when the
objects of that version exist (jobs are idempotent). Otherwise each slice is decoded once,
on ``previews.threads`` threads, and handed to every generator that wants it; a slice that
cannot be decoded is skipped (named in the objects' info) and gets a job of kind
``preview-instance`` that tries it again and, failing, waits in the dead letter with the
reason, while the rest of the series completes. Outputs become blobs under versioned keys,
recorded in one transaction; the previous version's blobs are deleted after. A killed worker's
job is taken over when its lease expires (the job queue's leases); progress
(``{"stage", "done", "total"}``) is recorded on the job as it goes, for status and events.

``instances_deleted`` forgets the derived objects of each series touched, and queues the
series again when instances of it remain.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.errors import GatewayError
from gateway.imaging import PixelDataError, jpeg2000
from gateway.services.archives import slice_order
from gateway.services.derived import (
    KIND,
    blob_key,
    content_version,
    derive_job,
    job_key,
    made_by_pipeline,
)
from gateway.services.jobs import JobRun, RetryPolicy, now_ms
from plugins.hookspecs import hookimpl
from plugins.previews.generators import (
    Generator,
    SeriesInput,
    Slice,
    frame_values,
    value,
)
from storage.errors import StorageError
from storage.records import Job

logger = logging.getLogger(__name__)

INSTANCE_KIND = "preview-instance"
# A process re-queues one series at most this often while its instances arrive (seconds).
REQUEUE_EVERY = 1.0
_last_queued: dict[tuple[int, str, str], float] = {}  # by (job queue, clinic, series)
PROGRESS_EVERY = 0.5  # seconds between two progress records of a run


def _floats(items: list, count: int) -> list[float] | None:
    try:
        result = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    return result if len(result) == count else None


def frame_positions(header: dict, frames: int) -> list[list[float] | None]:
    """ImagePositionPatient of each frame: the instance's own for a single frame, else its
    per-frame functional groups (enhanced objects); None where unknown."""
    return [_floats(frame_values(header, "00200032", n), 3) for n in range(1, frames + 1)]


def series_input(services, clinic: str, study: str, series: str) -> SeriesInput | None:
    """The series' slices along the slice axis, or None when it has no instance with pixels."""
    records = [r for r in services.index.instances(clinic, study, series) if r.frame_index]
    if not records:
        return None
    texts = list(services.index.instance_headers(clinic, study, series))
    headers = {}
    for text in texts:
        header = json.loads(text)
        headers[value(header, "00080018")] = header
    ordered = slice_order(records, texts)  # it reads the same DICOM JSON (no second dump and parse)
    slices = []
    for record in ordered:
        header = headers.get(record.sop_uid, {})
        frames = record.number_of_frames or 1
        for number, position in enumerate(frame_positions(header, frames), start=1):
            slices.append(Slice(len(slices), record, number, header, position))
    return SeriesInput(clinic, study, series, slices, modality=str(value(slices[0].header, "00080060", "")))


def generators(services) -> list[Generator]:
    return [g for group in services.pm.hook.derived_generators(settings=services.settings) for g in group]


class DeriveHandler:
    """Runs ``previews`` jobs (one series each)."""

    kind = KIND
    batch_size = 1

    def __init__(self, services):
        self.services = services
        settings = services.settings
        self.settings = settings
        self.lease_seconds = settings["previews.lease_seconds"]
        self.poll_interval = settings["previews.poll_interval"]
        self.threads = settings["previews.threads"]
        self.retry = RetryPolicy(settings["previews.retry_initial"], settings["previews.retry_max"],
                                 settings["previews.max_attempts"])
        if self.enabled():
            try:
                jpeg2000.load_encoder()
            except Exception as exc:  # each slice's encode says so again (and is skipped); the worker runs on
                logger.warning("the JPEG 2000 encoder could not be loaded: %s", exc)

    def enabled(self) -> bool:
        return self.settings["previews.enabled"]

    def run(self, jobs: list[Job], run: JobRun) -> None:
        for job in jobs:
            if run.stopping:
                return
            try:
                self.derive(job, run)
            except (GatewayError, StorageError, OSError) as exc:
                run.failed(job, f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a generator's bug must not stop the worker
                logger.exception("previews job %s failed", job.key)
                run.failed(job, f"{type(exc).__name__}: {exc}")

    def derive(self, job: Job, run: JobRun) -> None:
        core = self.services
        study, series = job.payload["study_uid"], job.payload["series_uid"]
        found = series_input(core, job.clinic_id, study, series)
        if found is None:
            core.derived.forget(job.clinic_id, study, series)
            run.done(job)
            return
        plans = []
        for generator in generators(core):
            params = generator.params(found, self.settings)
            if params is not None:
                plans.append((generator, params))
        version = content_version([s.record for s in found.slices if s.frame == 1],
                                  {g.name: p for g, p in plans})
        existing = [o for o in core.derived.store.for_series(job.clinic_id, series) if made_by_pipeline(o.name)]
        if plans and existing and all(o.version == version for o in existing):
            run.done(job)  # made already: a job queued again for the same content
            return
        scratch = Path(tempfile.mkdtemp(prefix="derive-", dir=core.blobs.staging_dir()))
        try:
            outputs, skipped = self._make(job, run, found, plans, version, scratch)
            if outputs is None:
                return  # the lease was lost: another worker has the job
            self._store(job, found, version, outputs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if skipped:
            core.jobs.enqueue([Job(INSTANCE_KIND, f"{series}/{s.record.sop_uid}", job.clinic_id,
                                   {"study_uid": study, "series_uid": series, "sop_uid": s.record.sop_uid,
                                    "frame": s.frame, "reason": reason}) for s, reason in skipped])
        run.done(job)
        logger.info("previews of series %s (%d slices, %d skipped): version %s", series, len(found.slices),
                    len(skipped), version)

    def _make(self, job: Job, run: JobRun, found: SeriesInput, plans, version: str, scratch: Path):
        sessions = [g.start(found, params, scratch, version) for g, params in plans]
        wanted = [(s, [x for x in sessions if x.wants(s)]) for s in found.slices]
        wanted = [(s, xs) for s, xs in wanted if xs]
        total, done, skipped = len(wanted), 0, []
        last_progress = 0.0
        retrieve = self.services.retrieve

        def prepare(item: Slice, users):
            try:
                pixels, header = retrieve.decoded_frame(item.record, item.frame)
            except (GatewayError, PixelDataError, ValueError, OSError) as exc:
                return None, getattr(exc, "message", None) or str(exc)
            except Exception as exc:  # pydicom and the codecs raise many kinds on broken data
                return None, f"{type(exc).__name__}: {exc}"
            try:
                return [x.prepare(item, pixels, header) for x in users], None
            except Exception as exc:  # a slice a generator cannot take (odd pixel type...) is skipped
                return None, f"{type(exc).__name__}: {exc}"
            finally:
                item.cache.clear()

        window = max(2, self.threads * 3)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="derive") as pool:
            pending = deque()
            items = iter(wanted)
            while True:
                while len(pending) < window and (nxt := next(items, None)) is not None:
                    pending.append((nxt, pool.submit(prepare, *nxt)))
                if not pending:
                    break
                (item, users), future = pending.popleft()
                prepared, error = future.result()
                if error is not None:
                    skipped.append((item, error))
                    for session in users:
                        session.skip(item, error)
                else:
                    for session, result in zip(users, prepared):
                        session.add(item, result)
                done += 1
                if time.monotonic() - last_progress > PROGRESS_EVERY or done == total:
                    last_progress = time.monotonic()
                    if not run.progress(job, {"stage": "slices", "done": done, "total": total,
                                              "version": version}):
                        for _, f in pending:
                            f.cancel()
                        return None, skipped
        run.progress(job, {"stage": "storing", "done": total, "total": total, "version": version})
        outputs = [o for session in sessions for o in session.finish()]
        return outputs, skipped

    def _store(self, job: Job, found: SeriesInput, version: str, outputs) -> None:
        from storage.records import DerivedObject

        core = self.services
        records = []
        for out in outputs:
            key = blob_key(job.clinic_id, found.study_uid, found.series_uid, version, out.name)
            size = out.path.stat().st_size
            core.blobs.put_file(key, out.path)
            records.append(DerivedObject(job.clinic_id, found.study_uid, found.series_uid, out.name, version, key,
                                         out.content_type, size, out.info, created_at=now_ms()))
        replaced = core.derived.store.put(records)
        made = {o.name for o in outputs}
        stale = [o.name for o in core.derived.store.for_series(job.clinic_id, found.series_uid)
                 if o.name not in made and made_by_pipeline(o.name)]
        replaced += core.derived.store.delete(job.clinic_id, found.study_uid, found.series_uid, names=stale)
        kept = {r.blob_key for r in records}
        for old in replaced:
            if old.blob_key not in kept:
                try:
                    core.blobs.delete(old.blob_key)
                except StorageError as exc:
                    logger.warning("could not delete %s: %s", old.blob_key, exc)


class InstanceHandler:
    """``preview-instance`` jobs: a slice a previews run could not decode, tried again; still
    failing, it goes to the dead letter with the reason; decodable now, the series is made again."""

    kind = INSTANCE_KIND
    batch_size = 10
    retry = RetryPolicy(60.0, 3600.0, 3)

    def __init__(self, services):
        self.services = services
        self.lease_seconds = services.settings["previews.lease_seconds"]
        self.poll_interval = services.settings["previews.poll_interval"]

    def enabled(self) -> bool:
        return self.services.settings["previews.enabled"]

    def run(self, jobs: list[Job], run: JobRun) -> None:
        core = self.services
        for job in jobs:
            study, series, sop = job.payload["study_uid"], job.payload["series_uid"], job.payload["sop_uid"]
            record = next(iter(core.index.instances(job.clinic_id, study, series, sop)), None)
            if record is None:
                run.done(job)  # deleted or replaced under another UID: nothing left to try
                continue
            try:
                core.retrieve.decoded_frame(record, int(job.payload.get("frame") or 1))
            except Exception as exc:
                reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                run.failed(job, f"instance {sop} of series {series} cannot be decoded: {reason}", permanent=True)
                continue
            core.jobs.enqueue([derive_job(job.clinic_id, study, series, reason="a skipped instance decodes now")])
            run.done(job)


def _queue(jobs, clinic: str, study: str, series: str, *, delay: float, reason: str, force: bool = False) -> None:
    now = time.monotonic()
    key = (id(jobs.queue), clinic, series)
    if not force and now - _last_queued.get(key, -1e9) < REQUEUE_EVERY:
        return
    _last_queued[key] = now
    if len(_last_queued) > 10_000:
        _last_queued.clear()
    jobs.enqueue([derive_job(clinic, study, series, due_ms=now_ms() + int(delay * 1000), reason=reason)])


@hookimpl
def instance_stored(outcome, settings, jobs):
    if not settings["previews.enabled"]:
        return
    record = outcome.record
    if record is None or not record.frame_index:
        return
    _queue(jobs, record.clinic_id, record.study_uid, record.series_uid, delay=settings["previews.settle_seconds"],
           reason="instances stored")


@hookimpl
def upload_completed(upload, series, settings, jobs):
    if not settings["previews.enabled"]:
        return
    for study_uid, series_uid in series:
        _queue(jobs, upload.clinic_id, study_uid, series_uid, delay=0, reason=f"upload {upload.id} complete",
               force=True)


@hookimpl
def instances_deleted(records, settings, jobs):
    if not settings["previews.enabled"]:
        return
    touched = {(r.clinic_id, r.study_uid, r.series_uid) for r in records}
    # The worker's job finds what is left: nothing (its objects are forgotten) or the rest.
    jobs.enqueue([derive_job(c, st, se, reason="instances deleted") for c, st, se in sorted(touched)])


@hookimpl
def register_job_handlers(services):
    return [DeriveHandler(services), InstanceHandler(services)]


__all__ = ["DeriveHandler", "InstanceHandler", "job_key", "series_input"]
