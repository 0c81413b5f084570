"""``gateway import``: files and folders through the one ingest path, in batches (one index
transaction each, as for a STOW request), on several processes when there are many.

Each process stages its share through an :class:`~gateway.services.ingest.StagingPipeline`
(files inspected on other threads while the next one is read); a process's parsing holds
its GIL, so several processes are what makes an import use several cores. They share
nothing but the stores, which take concurrent writers (the index is transactional, blobs
are written under content-derived keys): the guarantees are those of concurrent STOW
requests.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from auth.audit import audit_context
from auth.base import Principal

BATCH = 50
# A process of its own pays its start-up (a second or so) and shares the cores with the
# others: worth it from about this many files each.
FILES_PER_PROCESS = 1000
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
OUTCOMES = ("stored", "replaced", "duplicate", "rejected", "not DICOM")


@dataclass
class ImportReport:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    rejected: list[str] = field(default_factory=list)  # "path: why"

    def add(self, other: "ImportReport") -> None:
        for key, n in other.counts.items():
            self.counts[key] += n
        self.rejected += other.rejected


def is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicomdir(path: Path) -> bool:
    """A DICOMDIR has no SOPClassUID in its dataset: only its file meta names the class."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception:  # unreadable meta: let ingest report why
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")).strip().rstrip("\x00") == DICOMDIR_CLASS


def import_with(services, files: list[Path], clinic: str, progress: Callable[[int], None]) -> ImportReport:
    """Store ``files`` with ``services``; ``progress(n)`` after every ``n`` files."""
    principal = Principal.system(clinic, "cli-import")
    report = ImportReport()
    batch: list[Path] = []

    def flush(pipeline) -> None:
        with audit_context(client=f"cli:{os.getuid()}", door="cli"):
            outcomes = services.ingest.commit_many(pipeline.results(), principal=principal)
        for path, outcome in zip(batch, outcomes):
            if outcome.ok:
                report.counts[outcome.status] += 1
            else:
                report.counts["rejected"] += 1
                report.rejected.append(f"{path}: {outcome.error.message}")
        progress(len(batch))
        batch.clear()

    with services.ingest.pipeline() as pipeline:
        for path in files:
            if not is_part10(path) or is_dicomdir(path):
                report.counts["not DICOM"] += 1
                progress(1)
                continue
            with path.open("rb") as fh:
                pipeline.stage(fh)  # inspected on other threads while the next file is read
            batch.append(path)
            if len(batch) >= BATCH:
                flush(pipeline)
        if batch:
            flush(pipeline)
    return report


def import_files(files: list[Path], clinic: str, *, jobs: int, build_services: Callable,
                 progress: Callable[[int], None]) -> ImportReport:
    """Import on up to ``jobs`` processes (one per :data:`FILES_PER_PROCESS` files), each with
    its own services."""
    jobs = max(1, min(jobs, len(files) // FILES_PER_PROCESS))
    if jobs == 1:
        services = build_services()
        try:
            return import_with(services, files, clinic, progress)
        finally:
            services.close()
    # spawn, not fork: the caller may run threads (a fork copies their locks mid-use).
    context = multiprocessing.get_context("spawn")
    done = context.Queue()
    shares = [files[i::jobs] for i in range(jobs)]  # interleaved: each series spread over all
    report = ImportReport()
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_child, initargs=(done,)) as pool:
        futures = [pool.submit(_import_share, share, clinic) for share in shares]
        finished = 0
        while finished < len(files):
            n = done.get()
            if n is None:  # a child failed: its future says why
                break
            finished += n
            progress(n)
        for future in futures:
            report.add(future.result())
    return report


_progress_queue = None


def _init_child(queue) -> None:
    global _progress_queue
    _progress_queue = queue


def _import_share(files: list[Path], clinic: str) -> ImportReport:
    from gateway.config import load_settings
    from gateway.services import Services

    try:
        services = Services.build(load_settings())
        try:
            return import_with(services, files, clinic, _progress_queue.put)
        finally:
            services.close()
    except BaseException:
        _progress_queue.put(None)
        raise
