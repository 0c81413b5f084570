"""Benchmark a DICOMweb server's front door with a synthetic dental CBCT series.

    python -m bench.dicomweb_bench --url http://127.0.0.1:PORT/dicom-web \\
        [--slices 500] [--size 512] [--pid PID] [--label NAME] [--json out.jsonl]
    python -m bench.dicomweb_bench --compare out.jsonl

Phases: STOW-RS (multipart/related batches streamed from files, several requests in
flight), QIDO-RS, series metadata (repeated; p50/p99), series retrieve (one streamed
multipart response), and per-instance frame retrieval the way OHIF does it (six requests
in flight).  With --pid, the server's resident memory (the process and its children,
e.g. gunicorn workers) is sampled every 50 ms.  Not a test: nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import email.message
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pydicom
import requests
from pydicom.uid import generate_uid

from bench.common import MultipartFileBody, multipart_content_type
from gateway import synthetic

logger = logging.getLogger(__name__)

MB = 1_000_000
DICOM_JSON = "application/dicom+json"
ACCEPT_SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
TIMEOUT = (10.0, 600.0)  # connect, read

# Extra headers of every request (--token gives "Authorization: Bearer ...").
AUTH_HEADERS: dict[str, str] = {}


def _session() -> requests.Session:
    session = requests.Session()
    session.headers.update(AUTH_HEADERS)
    return session


class BenchError(RuntimeError):
    pass


@dataclass
class SeriesOnDisk:
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    paths: list[Path]
    total_bytes: int
    frame_bytes: int  # uncompressed bytes of one frame


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0


@dataclass
class Results:
    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=float), q)) if samples else float("nan")


def boundary_of(content_type: str) -> str:
    msg = email.message.Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BenchError(f"no boundary in Content-Type {content_type!r}")
    return boundary


def count_delimiters(chunks: Iterable[bytes], boundary: str) -> tuple[int, int]:
    """Stream through a multipart body; return (bytes, number of parts)."""
    delimiter = b"--" + boundary.encode("latin-1")
    keep = len(delimiter) - 1  # a tail this short cannot hold a whole delimiter: no double counts
    tail, hits, total = b"", 0, 0
    for chunk in chunks:
        total += len(chunk)
        data = tail + chunk
        hits += data.count(delimiter)
        tail = data[-keep:]
    return total, max(hits - 1, 0)  # the close delimiter "--boundary--" matches too


class RssSampler:
    """Samples the summed RSS of a process and its children every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        try:
            import psutil
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise BenchError("--pid needs psutil: pip install psutil") from exc
        self._psutil = psutil
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        total = 0
        try:
            procs = [self.process, *self.process.children(recursive=True)]
        except self._psutil.NoSuchProcess:
            return 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.rss()))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float | None = None, end: float | None = None) -> int:
        values = [
            rss for t, rss in self.samples if (start is None or t >= start) and (end is None or t <= end)
        ]
        return max(values, default=0)


class SessionPool:
    """One requests.Session per thread, as a browser keeps one connection per request slot."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = _session()
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        for session in self._all:
            session.close()


def chunks_of(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------


def generate(workdir: Path, slices: int, size: int) -> SeriesOnDisk:
    # A fresh study per run, so runs never collide with data left on the server.
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = synthetic.write_cbct(
        workdir,
        slices,
        size,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id="BENCH-0001",
        patient_name="Bench^CBCT",
    )
    sop_uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    return SeriesOnDisk(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uids=sop_uids,
        paths=paths,
        total_bytes=sum(p.stat().st_size for p in paths),
        frame_bytes=size * size * 2,
    )


def stow(url: str, series: SeriesOnDisk, batch: int, in_flight: int, res: Results) -> None:
    pool = SessionPool()
    latencies: list[float] = []
    stored = 0
    failures: list[str] = []
    lock = threading.Lock()

    def post(paths: list[Path]) -> None:
        nonlocal stored
        boundary = f"bench-{uuid.uuid4().hex}"
        body = MultipartFileBody(paths, boundary)
        headers = {
            "Content-Type": multipart_content_type(boundary),
            "Accept": DICOM_JSON,
        }
        t0 = time.perf_counter()
        try:
            response = pool.get().post(f"{url}/studies", data=body, headers=headers, timeout=TIMEOUT)
        finally:
            body.close()
        elapsed = time.perf_counter() - t0
        ok, failed = _stow_counts(response, len(paths))
        with lock:
            latencies.append(elapsed)
            stored += ok
            if failed or response.status_code not in (200, 202):
                failures.append(f"HTTP {response.status_code}, {failed} failed: {response.text[:300]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as executor:
        for future in [executor.submit(post, chunk) for chunk in chunks_of(series.paths, batch)]:
            future.result()
    wall = time.perf_counter() - t0
    pool.close()
    if failures:
        raise BenchError("STOW-RS failed: " + "; ".join(failures[:3]))
    res.values.update(
        store_s=wall,
        store_instances_per_s=len(series.paths) / wall,
        store_mb_per_s=series.total_bytes / MB / wall,
        store_request_p50_ms=percentile(latencies, 50) * 1e3,
        store_requests=len(latencies),
        store_acknowledged=stored,
    )


def _stow_counts(response: requests.Response, sent: int) -> tuple[int, int]:
    """(stored, failed) from a STOW-RS response; falls back to `sent` if there is no body."""
    try:
        body = response.json()
    except ValueError:
        return (sent, 0) if response.ok else (0, sent)
    stored = len(body.get("00081199", {}).get("Value", []))
    failed = len(body.get("00081198", {}).get("Value", []))
    return stored, failed


def timed_get(session: requests.Session, url: str, accept: str, **params: str) -> tuple[float, requests.Response]:
    t0 = time.perf_counter()
    response = session.get(url, headers={"Accept": accept}, params=params or None, timeout=TIMEOUT)
    _ = response.content  # to the last byte
    return time.perf_counter() - t0, response


def qido(url: str, series: SeriesOnDisk, res: Results) -> None:
    with _session() as s:
        elapsed, response = timed_get(s, f"{url}/studies", DICOM_JSON, StudyInstanceUID=series.study_uid)
        response.raise_for_status()
        studies = response.json()
        if len(studies) != 1:
            raise BenchError(f"QIDO /studies?StudyInstanceUID= returned {len(studies)} studies")
        res.values["qido_study_ms"] = elapsed * 1e3
        instances = f"{url}/studies/{series.study_uid}/series/{series.series_uid}/instances"
        elapsed, response = timed_get(s, instances, DICOM_JSON)
        response.raise_for_status()
        found = len(response.json())
        res.values["qido_instances_ms"] = elapsed * 1e3
        res.values["qido_instances_found"] = found
        if found != len(series.sop_uids):
            logger.warning("QIDO found %d instances, stored %d", found, len(series.sop_uids))


def metadata(url: str, series: SeriesOnDisk, reps: int, res: Results) -> None:
    target = f"{url}/studies/{series.study_uid}/series/{series.series_uid}/metadata"
    timings: list[float] = []
    with _session() as s:
        for i in range(reps + 1):
            elapsed, response = timed_get(s, target, DICOM_JSON)
            response.raise_for_status()
            if i == 0:
                count = len(response.json())
                if count != len(series.sop_uids):
                    raise BenchError(f"series metadata has {count} instances, expected {len(series.sop_uids)}")
                res.values["metadata_first_ms"] = elapsed * 1e3
                res.values["metadata_bytes"] = len(response.content)
            else:
                timings.append(elapsed)
    res.values["metadata_p50_ms"] = percentile(timings, 50) * 1e3
    res.values["metadata_p99_ms"] = percentile(timings, 99) * 1e3
    res.values["metadata_reps"] = len(timings)


def retrieve_series(url: str, series: SeriesOnDisk, reps: int, res: Results) -> None:
    target = f"{url}/studies/{series.study_uid}/series/{series.series_uid}"
    timings: list[float] = []
    nbytes = parts = 0
    with _session() as s:
        for _ in range(reps):
            t0 = time.perf_counter()
            with s.get(target, headers={"Accept": ACCEPT_SERIES}, stream=True, timeout=TIMEOUT) as response:
                response.raise_for_status()
                boundary = boundary_of(response.headers.get("Content-Type", ""))
                nbytes, parts = count_delimiters(response.iter_content(chunk_size=1 << 20), boundary)
            timings.append(time.perf_counter() - t0)
            if parts != len(series.sop_uids) or nbytes < series.total_bytes * 0.9:
                raise BenchError(
                    f"series retrieve returned {parts} parts / {nbytes} bytes, "
                    f"expected {len(series.sop_uids)} parts / about {series.total_bytes} bytes"
                )
    median = percentile(timings, 50)
    res.values.update(
        retrieve_s=median,
        retrieve_mb_per_s=nbytes / MB / median,
        retrieve_instances_per_s=parts / median,
        retrieve_bytes=nbytes,
        retrieve_reps=len(timings),
    )


def frames(url: str, series: SeriesOnDisk, in_flight: int, res: Results) -> None:
    base = f"{url}/studies/{series.study_uid}/series/{series.series_uid}/instances"
    pool = SessionPool()
    latencies: list[float] = []
    lock = threading.Lock()

    def fetch(sop_uid: str) -> None:
        elapsed, response = timed_get(pool.get(), f"{base}/{sop_uid}/frames/1", ACCEPT_FRAMES)
        if response.status_code != 200:
            raise BenchError(f"frame of {sop_uid}: HTTP {response.status_code} {response.text[:200]}")
        if len(response.content) < series.frame_bytes:
            raise BenchError(f"frame of {sop_uid}: {len(response.content)} bytes < {series.frame_bytes}")
        with lock:
            latencies.append(elapsed)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as executor:
        for future in [executor.submit(fetch, uid) for uid in series.sop_uids]:
            future.result()
    wall = time.perf_counter() - t0
    pool.close()
    res.values.update(
        frames_s=wall,
        frames_per_s=len(series.sop_uids) / wall,
        frame_p50_ms=percentile(latencies, 50) * 1e3,
        frame_p99_ms=percentile(latencies, 99) * 1e3,
    )


def delete_study(url: str, series: SeriesOnDisk, res: Results) -> None:
    response = _session().delete(f"{url}/studies/{series.study_uid}", timeout=TIMEOUT)
    if response.status_code in (200, 202, 204):
        res.values["deleted"] = True
    elif response.status_code in (404, 405, 501):
        res.values["deleted"] = False
        logger.info("server does not delete over DICOMweb (HTTP %d); study left in place", response.status_code)
    else:
        res.errors["delete"] = f"HTTP {response.status_code}: {response.text[:200]}"


# --------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------


def run_phase(name: str, res: Results, func: Callable[[], None], *, fatal: bool = False) -> None:
    phase = Phase(name, time.perf_counter())
    res.phases.append(phase)
    logger.info("phase %s ...", name)
    try:
        func()
    except (BenchError, requests.RequestException, ValueError) as exc:
        res.errors[name] = str(exc)
        logger.error("%s failed: %s", name, exc)
        if fatal:
            raise
    finally:
        phase.end = time.perf_counter()


def run(args: argparse.Namespace) -> Results:
    url = args.url.rstrip("/")
    res = Results()
    sampler = RssSampler(args.pid) if args.pid else None
    res.values.update(
        label=args.label or urlsplit(url).netloc,
        url=url,
        when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        slices=args.slices,
        size=args.size,
        store_batch=args.batch,
        store_in_flight=args.store_in_flight,
        frames_in_flight=args.frames_in_flight,
        host_cpus=os.cpu_count(),
        python=platform.python_version(),
    )
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-", dir=args.workdir) as tmp:
        t0 = time.perf_counter()
        series = generate(Path(tmp), args.slices, args.size)
        res.values.update(generate_s=time.perf_counter() - t0, total_mb=series.total_bytes / MB)
        logger.info("generated %d files, %.1f MB, study %s", len(series.paths), series.total_bytes / MB, series.study_uid)
        if sampler:
            res.values["baseline_rss_mb"] = sampler.rss() / MB
            sampler.start()
        try:
            run_phase("store", res, lambda: stow(url, series, args.batch, args.store_in_flight, res), fatal=True)
            run_phase("qido", res, lambda: qido(url, series, res))
            run_phase("metadata", res, lambda: metadata(url, series, args.metadata_reps, res))
            run_phase("retrieve", res, lambda: retrieve_series(url, series, args.retrieve_reps, res))
            run_phase("frames", res, lambda: frames(url, series, args.frames_in_flight, res))
        finally:
            if sampler:
                sampler.stop()
                res.values["peak_rss_mb"] = sampler.peak() / MB
                for phase in res.phases:
                    res.values[f"peak_rss_{phase.name}_mb"] = sampler.peak(phase.start, phase.end) / MB
            if not args.keep:
                run_phase("delete", res, lambda: delete_study(url, series, res))
    res.values["errors"] = res.errors
    return res


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:{spec}}{unit}"


def markdown_table(v: dict[str, Any]) -> str:
    rows = [
        ("target", f"{v['label']} ({v['url']})"),
        ("series", f"{v['slices']} × {v['size']}² CT, {v.get('total_mb', 0):.1f} MB"),
        (
            f"STOW-RS store ({v['store_batch']}/request, {v['store_in_flight']} in flight)",
            f"{_fmt(v.get('store_instances_per_s'), '.1f')} inst/s, {_fmt(v.get('store_mb_per_s'), '.1f')} MB/s",
        ),
        ("QIDO study / instances", f"{_fmt(v.get('qido_study_ms'), '.1f', ' ms')} / {_fmt(v.get('qido_instances_ms'), '.1f', ' ms')}"),
        (
            f"series metadata (first, then p50/p99 of {v.get('metadata_reps', '?')})",
            f"{_fmt(v.get('metadata_first_ms'), '.1f', ' ms')}, "
            f"{_fmt(v.get('metadata_p50_ms'), '.1f', ' ms')} / {_fmt(v.get('metadata_p99_ms'), '.1f', ' ms')}",
        ),
        (
            "series retrieve (multipart, p50)",
            f"{_fmt(v.get('retrieve_mb_per_s'), '.1f')} MB/s, {_fmt(v.get('retrieve_instances_per_s'), '.1f')} inst/s",
        ),
        (
            f"frames ({v['frames_in_flight']} in flight)",
            f"{_fmt(v.get('frames_per_s'), '.1f')} frames/s, p50 {_fmt(v.get('frame_p50_ms'), '.1f', ' ms')}, "
            f"p99 {_fmt(v.get('frame_p99_ms'), '.1f', ' ms')}",
        ),
    ]
    if "peak_rss_mb" in v:
        rows.append(("server peak RSS (baseline)", f"{v['peak_rss_mb']:.0f} MB ({v['baseline_rss_mb']:.0f} MB)"))
    if "deleted" in v:
        rows.append(("study deleted", "yes" if v["deleted"] else "no (DELETE not supported)"))
    for phase, message in v.get("errors", {}).items():
        rows.append((f"error in {phase}", message[:120]))
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {val} |" for k, val in rows]
    return "\n".join(lines)


COMPARED = [
    ("store_instances_per_s", "store inst/s", True),
    ("store_mb_per_s", "store MB/s", True),
    ("qido_study_ms", "QIDO study ms", False),
    ("metadata_first_ms", "metadata first ms", False),
    ("metadata_p50_ms", "metadata p50 ms", False),
    ("metadata_p99_ms", "metadata p99 ms", False),
    ("retrieve_mb_per_s", "retrieve MB/s", True),
    ("frames_per_s", "frames/s", True),
    ("frame_p99_ms", "frame p99 ms", False),
    ("peak_rss_mb", "peak RSS MB", False),
]


def compare_table(lines: list[dict[str, Any]]) -> str:
    """Side-by-side table; ratios are 'how many times better than the first target'."""
    base = lines[0]
    header = "| metric | " + " | ".join(line["label"] for line in lines) + " | " + " | ".join(
        f"{line['label']} vs {base['label']}" for line in lines[1:]
    ) + " |"
    out = [header, "|---" * (1 + len(lines) + len(lines) - 1) + "|"]
    for key, name, higher_is_better in COMPARED:
        cells = [_fmt(line.get(key), ".1f") for line in lines]
        ratios = []
        for line in lines[1:]:
            a, b = line.get(key), base.get(key)
            if a and b:
                ratios.append(f"{(a / b if higher_is_better else b / a):.2f}×")
            else:
                ratios.append("–")
        out.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="DICOMweb root, e.g. http://127.0.0.1:8043/dicom-web")
    p.add_argument("--slices", type=int, default=500)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--pid", type=int, help="server PID: sample its RSS (with children) every 50 ms")
    p.add_argument("--label", help="name of the target in the report (default: host:port)")
    p.add_argument("--json", type=Path, help="append the results as one JSON line to this file")
    p.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    p.add_argument("--store-in-flight", type=int, default=3, help="concurrent STOW-RS requests")
    p.add_argument("--frames-in-flight", type=int, default=6, help="concurrent frame requests (OHIF: 6)")
    p.add_argument("--metadata-reps", type=int, default=20)
    p.add_argument("--retrieve-reps", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="do not DELETE the study afterwards")
    p.add_argument("--workdir", help="where to write the temporary series (default: system temp)")
    p.add_argument("--compare", type=Path, help="print a side-by-side table of the JSON lines in this file")
    p.add_argument("--token", help="bearer token sent on every request (the gateway needs one)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.token:
        AUTH_HEADERS["Authorization"] = f"Bearer {args.token}"
    if not args.compare and not args.url:
        p.error("--url is required (or --compare FILE)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    if args.compare:
        lines = [json.loads(line) for line in args.compare.read_text().splitlines() if line.strip()]
        if not lines:
            print(f"no results in {args.compare}", file=sys.stderr)
            return 1
        print(compare_table(lines))
        return 0
    try:
        res = run(args)
    except BenchError as exc:
        print(f"benchmark aborted: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(res.values))
    if args.json:
        with args.json.open("a") as fh:
            fh.write(json.dumps(res.values, sort_keys=True) + "\n")
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
