"""Side by side: our gateway (SQLite + folder, and PostgreSQL + S3) against Orthanc, and the floor.

    python -m bench.compare [--slices 500 --size 512 --intraoral 1000 --qido-studies 5000]
                            [--targets gateway,gateway-pg-s3,orthanc] [--markdown out.md] [--json out.json]

One command: it starts every target on this machine, runs the same workloads on each in
alternation (the order rotates from one workload to the next), measures the floor of the
machine, and prints one markdown table. Orthanc 1.10 listens on 0.0.0.0, so the whole run
goes into a private network namespace that has only loopback: the command re-executes itself
under ``unshare -n`` (root) unless it already runs in one. PostgreSQL is reached there through
its Unix socket (``--pg``, default ``/var/run/postgresql``); ``moto_server`` stands in for S3
on loopback (in memory: S3's network latency is *not* in these numbers).

Comparable settings: both store uncompressed files as received on the same disk, and call
fsync per instance (gateway ``storage.fsync = true``; Orthanc's default ``SyncStorageArea``);
gateway 2 gunicorn workers x 8 threads, Orthanc's defaults (50 HTTP threads, SQLite index,
``StorageAccessOnFind: Always``). Clients: ``requests`` for DICOMweb, dcmtk ``storescu`` with
``TCP_NODELAY=1`` for C-STORE. Not a test: nothing here asserts on time.

Workloads: STOW-RS of the synthetic CBCT (50 instances per request, 3 in flight); STOW-RS
of intraoral images one per request (4 in flight); C-STORE of a second copy of the CBCT on
one association; STOW-RS of header-only studies, then QIDO study searches (p50/p99, one
client) on that database; WADO-RS series retrieve (``transfer-syntax=*``) and series
metadata; the upload of half a third CBCT copy (ours: one upload of 4 zip archives made on the fly
and sent at once by ``gateway-client``'s library; Orthanc: ``POST /instances`` from 4 clients) and STOW-RS of its
other half from 4 clients; the study as one zip archive (ours: ``/api/v1/studies/{s}/archive``, stored entries;
Orthanc: ``/studies/{id}/archive``) and, ours only, a 50-slice ``?slices=`` zip; the peak RSS of
each server's process tree, over the run and during the downloads. The floor: the CBCT's files
written with an fsync each and read back from disk, and the same bytes through a plain loopback
HTTP server (upload and download).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    MultipartFileBody,
    free_port,
    multipart_body,
    multipart_content_type,
)
from bench.dicomweb_bench import (  # noqa: E402
    RssSampler,
    SessionPool,
    boundary_of,
    count_delimiters,
    percentile,
)

logger = logging.getLogger(__name__)

MB = 1_000_000
DICOM_JSON = "application/dicom+json"
SCU_AE = "BENCHSCU"
DEFAULT_PG = "host=/var/run/postgresql user=postgres dbname=postgres"
ACCEPT_SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
TIMEOUT = (10.0, 900.0)
LABELS = {"gateway": "gateway (SQLite + folder)", "gateway-pg-s3": "gateway (PostgreSQL + S3/moto)",
          "orthanc": "Orthanc 1.10.1", "pynetdicom": "bare pynetdicom SCP (ceiling)"}


# --- helpers ----------------------------------------------------------------------------------

def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def say(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


@dataclass
class Target:
    name: str
    dicomweb: str
    ae_title: str
    dimse_port: int
    pid: int
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Authorization for the gateway
    env: dict[str, str] = field(default_factory=dict)  # a gateway's environment (for `gateway import`)
    dimse_only: bool = False  # the bare pynetdicom SCP: C-STORE workloads only
    sampler: RssSampler | None = None
    results: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)


# --- targets --------------------------------------------------------------------------------

def start_gateway(stack: ExitStack, root: Path, name: str, storage: dict[str, str], args) -> Target:
    from tests.conftest import ServerProcess
    from tests.services import env_of

    dimse_port = free_port()
    settings = {"server.workers": 2, "server.threads": 8, "log.level": "warning", "storage.fsync": "true",
                "dimse.listeners": 2,  # as many as the HTTP workers: one per core
                "dimse.enabled": "true", "dimse.host": "127.0.0.1", "dimse.port": dimse_port,
                "dimse.ae_title": "DENTALGW", "dimse.peers": json.dumps([{"ae_title": SCU_AE}]), **storage,
                **dict(item.split("=", 1) for item in args.gateway_setting)}
    server = ServerProcess(root / name / "data", env=env_of(settings))
    server.start(timeout=120)
    stack.callback(server.stop)
    wait_port(dimse_port)
    token = args.token or getattr(server, "token", None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Target(name, server.dicomweb, "DENTALGW", dimse_port, server.proc.pid, headers, env=server.env)


def start_bare_scp(stack: ExitStack, root: Path) -> Target:
    """pynetdicom's own ceiling: ``bench.bare_scp``, a storage SCP that only writes the files."""
    port = free_port()
    folder = root / "pynetdicom"
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_scp", str(port), str(folder)], cwd=ROOT)
    stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    wait_port(port)
    return Target("pynetdicom", "", "BARESCP", port, proc.pid, dimse_only=True)


def start_orthanc(stack: ExitStack, root: Path) -> Target:
    from bench.orthanc import Orthanc

    http_port, dicom_port = free_port(), free_port()
    orthanc = Orthanc(http_port, dicom_port, root / "orthanc", extra_config={"DicomAet": "ORTHANC"})
    orthanc.start(timeout=60)
    stack.callback(orthanc.stop)
    wait_port(dicom_port)
    return Target("orthanc", orthanc.dicomweb_url, "ORTHANC", dicom_port, orthanc.pid)


# --- data ----------------------------------------------------------------------------------------

@dataclass
class FileSet:
    name: str
    paths: list[Path]
    study_uid: str = ""
    series_uid: str = ""

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def make_cbct(folder: Path, slices: int, size: int, tag: str) -> FileSet:
    from pydicom.uid import generate_uid

    from gateway.synthetic import write_cbct

    study, series = generate_uid(), generate_uid()
    paths = write_cbct(folder, slices, size, study_uid=study, series_uid=series, patient_id=f"BENCH-{tag}",
                       patient_name=f"Bench^{tag}")
    return FileSet(f"cbct-{tag}", paths, study, series)


def make_intraoral(folder: Path, count: int) -> FileSet:
    """``count`` intraoral radiographs (the generator's size: 1000 x 1300, 16-bit), 10 per study;
    8 distinct images, each copy with its own UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    from gateway.synthetic import intraoral_image

    folder.mkdir(parents=True, exist_ok=True)
    bases = [intraoral_image(seed=seed) for seed in range(8)]
    paths = []
    study = series = ""
    for i in range(count):
        if i % 10 == 0:
            study, series = generate_uid(), generate_uid()
        ds = bases[i % len(bases)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.InstanceNumber = f"IO-{i // 10:05d}", i % 10 + 1
        path = folder / f"io_{i:05d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return FileSet("intraoral", paths)


FAMILY = ["Smith", "Muller", "Schmidt", "Garcia", "Nguyen", "Kim", "Rossi", "Dubois", "Novak", "Jensen",
          "Silva", "Cohen", "Ivanov", "Yilmaz", "Tanaka", "Wang", "Kowalski", "Horvat", "Larsen", "Moreau"]


def make_qido_corpus(count: int, seed: int = 5) -> tuple[list[bytes], list[str], list[str]]:
    """``count`` single-instance studies (header only) with varied patients and dates; returns the
    Part 10 bytes, the patient IDs and 3-letter name prefixes present."""
    import pydicom
    from pydicom.dataset import Dataset as PydicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = random.Random(seed)
    start = datetime(2015, 1, 1)
    out, patient_ids = [], []
    for i in range(count):
        patient = rng.randrange(max(1, count // 2))
        prng = random.Random(patient)
        family = prng.choice(FAMILY) + ("" if prng.random() < 0.5 else prng.choice(["son", "er", "ova", "ic"]))
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.3"  # intraoral for presentation
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = PydicomDataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID = f"P{patient:07d}"
        ds.PatientName = f"{family}^{prng.choice(['Anna', 'Jonas', 'Mia', 'Paul', 'Lea', 'Omar'])}"
        ds.PatientBirthDate, ds.PatientSex = f"{prng.randint(1940, 2015)}0101", prng.choice("MF")
        if rng.random() > 0.01:
            ds.StudyDate = (start + timedelta(days=rng.randrange(3650))).strftime("%Y%m%d")
        ds.StudyTime = f"{rng.randrange(8, 18):02d}{rng.randrange(60):02d}00"
        ds.AccessionNumber, ds.StudyID = f"ACC{i:08d}", str(i)
        ds.StudyDescription = rng.choice(["Bitewing", "Periapical", "Panoramic", "CBCT"])
        ds.ReferringPhysicianName = "Dental^Doctor"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "IO", 1, 1
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        out.append(buffer.getvalue())
        patient_ids.append(ds.PatientID)
    prefixes = sorted({f[:3].upper() for f in FAMILY})
    return out, patient_ids, prefixes


# --- workloads -----------------------------------------------------------------------------------

def stow_paths(url: str, paths: list[Path], batch: int, in_flight: int, headers=None) -> dict[str, float]:
    pool = SessionPool()
    failures: list[str] = []
    lock = threading.Lock()
    stored = 0

    def post(chunk: list[Path]) -> None:
        nonlocal stored
        boundary = f"bench-{uuid.uuid4().hex}"
        body = MultipartFileBody(chunk, boundary)
        try:
            response = pool.get().post(f"{url}/studies", data=body, timeout=TIMEOUT, headers={
                "Content-Type": multipart_content_type(boundary),
                "Accept": DICOM_JSON, **(headers or {})})
        finally:
            body.close()
        ok = _referenced(response)
        with lock:
            stored += ok
            if response.status_code != 200 or ok != len(chunk):
                failures.append(f"HTTP {response.status_code}: {response.text[:200]}")

    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as executor:
        for future in [executor.submit(post, c) for c in chunks]:
            future.result()
    seconds = time.perf_counter() - started
    pool.close()
    if failures:
        raise RuntimeError(f"{len(failures)} STOW request(s) failed: {failures[0]}")
    size = sum(p.stat().st_size for p in paths)
    return {"s": seconds, "inst_per_s": len(paths) / seconds, "mb_per_s": size / MB / seconds}


def stow_bytes(url: str, instances: list[bytes], batch: int, in_flight: int, headers=None) -> dict[str, float]:
    pool = SessionPool()

    def post(chunk: list[bytes]) -> None:
        boundary = f"bench-{uuid.uuid4().hex}"
        response = pool.get().post(f"{url}/studies", data=multipart_body(chunk, boundary), timeout=TIMEOUT, headers={
            "Content-Type": multipart_content_type(boundary),
            "Accept": DICOM_JSON, **(headers or {})})
        if response.status_code != 200 or _referenced(response) != len(chunk):
            raise RuntimeError(f"STOW of header-only studies: HTTP {response.status_code}: {response.text[:200]}")

    chunks = [instances[i:i + batch] for i in range(0, len(instances), batch)]
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as executor:
        for future in [executor.submit(post, c) for c in chunks]:
            future.result()
    seconds = time.perf_counter() - started
    pool.close()
    return {"s": seconds, "inst_per_s": len(instances) / seconds}


def _referenced(response: requests.Response) -> int:
    try:
        return len(response.json().get("00081199", {}).get("Value", []))
    except (ValueError, AttributeError):
        return 0


def c_store(target: Target, paths: list[Path]) -> dict[str, float]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    run = subprocess.run(["storescu", "-R", "-aet", SCU_AE, "-aec", target.ae_title, "127.0.0.1",
                          str(target.dimse_port), *map(str, paths)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"storescu failed: {run.stderr[-500:]}")
    size = sum(p.stat().st_size for p in paths)
    return {"s": seconds, "inst_per_s": len(paths) / seconds, "mb_per_s": size / MB / seconds}


def c_store_parallel(target: Target, paths: list[Path], associations: int) -> dict[str, float]:
    """``associations`` storescu processes at once, each on its own association with its share."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    shares = [paths[i::associations] for i in range(associations)]
    started = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-R", "-aet", SCU_AE, "-aec", target.ae_title, "127.0.0.1",
                               str(target.dimse_port), *map(str, share)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for share in shares]
    errors = [stderr for proc in procs for stderr in [proc.communicate()[1]] if proc.returncode != 0]
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"storescu failed: {errors[0][-500:]}")
    size = sum(p.stat().st_size for p in paths)
    return {"s": seconds, "inst_per_s": len(paths) / seconds, "mb_per_s": size / MB / seconds}


def stow_dicomweb_client(url: str, paths: list[Path], headers=None, *, check: bool = True) -> dict[str, float]:
    """The CBCT in one STOW-RS request sent by dicomweb-client, as a new user would: the data
    sets are read before the clock starts; encoding them (the client writes every data set
    into one body in memory before it sends a byte) and sending is timed. ``check=False``:
    the floor server's empty answer."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    datasets = [pydicom.dcmread(path) for path in paths]
    client = DICOMwebClient(url, headers=headers or {})
    started = time.perf_counter()
    if check:
        result = client.store_instances(datasets)
    else:
        client._session.post = _ignore_answer(client._session.post)
        client.store_instances(datasets)
    seconds = time.perf_counter() - started
    client._session.close()  # the floor server serves one connection at a time
    stored = len(result.get("ReferencedSOPSequence", [])) if check else len(paths)
    if stored != len(paths):
        raise RuntimeError(f"dicomweb-client STOW stored {stored} of {len(paths)}")
    size = sum(p.stat().st_size for p in paths)
    return {"s": seconds, "inst_per_s": len(paths) / seconds, "mb_per_s": size / MB / seconds}


def _ignore_answer(post):
    """The floor server answers 200 with no body: give dicomweb-client a valid empty one."""
    def wrapped(*args, **kwargs):
        response = post(*args, **kwargs)
        response._content = b"{}"
        response.headers["Content-Type"] = DICOM_JSON
        return response
    return wrapped


def orthanc_post_instances(base: str, paths: list[Path], clients: int) -> None:
    """Orthanc's own way in: ``POST /instances``, one file a request, from ``clients`` clients."""
    pool = SessionPool()

    def post(path: Path) -> None:
        response = pool.get().post(f"{base}/instances", data=path.read_bytes(), timeout=TIMEOUT,
                                   headers={"Content-Type": "application/dicom"})
        if response.status_code != 200:
            raise RuntimeError(f"POST /instances: HTTP {response.status_code}: {response.text[:200]}")

    with ThreadPoolExecutor(clients) as executor:
        list(executor.map(post, paths))
    pool.close()


def import_folder(target: Target, data: FileSet, clients: int = 4) -> dict[str, float]:
    """Ours: ``gateway import FOLDER`` beside the running server (same settings, same stores);
    Orthanc: ``POST /instances`` from ``clients`` clients."""
    started = time.perf_counter()
    if target.name == "orthanc":
        orthanc_post_instances(_base_url(target), data.paths, clients)
    else:
        run = subprocess.run([sys.executable, "-m", "gateway.cli", "import", "--quiet", str(data.paths[0].parent)],
                             env=target.env, cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0 or f"{len(data.paths)} stored" not in run.stdout:
            raise RuntimeError(f"gateway import: {run.stdout[-300:]} {run.stderr[-500:]}")
    seconds = time.perf_counter() - started
    return {"s": seconds, "inst_per_s": len(data.paths) / seconds, "mb_per_s": data.bytes / MB / seconds}


def cp_sync_floor(paths: list[Path], workdir: Path) -> dict[str, float]:
    """``cp`` of the files into a new folder, then ``sync``: the floor the issue's table names."""
    folder = workdir / "floor-cp"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    subprocess.run(["cp", *map(str, paths), str(folder)], check=True)
    subprocess.run(["sync"], check=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return {"cbct_cp_sync_mb_per_s": sum(p.stat().st_size for p in paths) / MB / seconds}


def timed_get(session: requests.Session, url: str, params=None, accept: str = DICOM_JSON) -> tuple[float, int]:
    started = time.perf_counter()
    response = session.get(url, params=params, headers={"Accept": accept, "Accept-Encoding": "gzip"},
                           timeout=TIMEOUT)
    _ = response.content
    return (time.perf_counter() - started) * 1000, response.status_code


def qido(url: str, patient_ids: list[str], prefixes: list[str], reps: int, headers=None,
         seed: int = 9) -> dict[str, float]:
    rng = random.Random(seed)
    ohif = {"limit": "101", "offset": "0", "fuzzymatching": "false", "includefield": "00081030,00080060"}
    kinds: dict[str, Callable[[], dict]] = {
        "ohif_list": lambda: dict(ohif),
        "patient_id": lambda: {"PatientID": rng.choice(patient_ids)},
        "name_prefix": lambda: {**ohif, "PatientName": rng.choice(prefixes) + "*"},
    }
    out: dict[str, float] = {}
    with requests.Session() as session:
        session.headers.update(headers or {})
        for kind, make in kinds.items():
            for _ in range(3):  # warm-up
                timed_get(session, f"{url}/studies", make())
            times = []
            for _ in range(reps):
                ms, status = timed_get(session, f"{url}/studies", make())
                if status != 200:
                    raise RuntimeError(f"QIDO {kind}: HTTP {status}")
                times.append(ms)
            out[f"{kind}_p50_ms"] = percentile(times, 50)
            out[f"{kind}_p99_ms"] = percentile(times, 99)
    return out


def retrieve(url: str, data: FileSet, reps: int, metadata_reps: int, headers=None) -> dict[str, float]:
    series = f"{url}/studies/{data.study_uid}/series/{data.series_uid}"
    out: dict[str, float] = {}
    timings = []
    with requests.Session() as session:
        session.headers.update(headers or {})
        for _ in range(reps):
            started = time.perf_counter()
            with session.get(series, headers={"Accept": ACCEPT_SERIES}, stream=True, timeout=TIMEOUT) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"series retrieve: HTTP {response.status_code} {response.text[:200]}")
                nbytes, parts = count_delimiters(response.iter_content(1 << 20),
                                                 boundary_of(response.headers["Content-Type"]))
            timings.append(time.perf_counter() - started)
            if parts != len(data.paths):
                raise RuntimeError(f"series retrieve gave {parts} parts, expected {len(data.paths)}")
        median = percentile(timings, 50)
        out["retrieve_mb_per_s"] = nbytes / MB / median
        out["retrieve_s"] = median
        times = []
        for i in range(metadata_reps + 1):
            ms, status = timed_get(session, f"{series}/metadata")
            if status != 200:
                raise RuntimeError(f"series metadata: HTTP {status}")
            if i == 0:
                out["metadata_first_ms"] = ms
            else:
                times.append(ms)
        out["metadata_p50_ms"] = percentile(times, 50)
        out["metadata_p99_ms"] = percentile(times, 99)
    return out


def _base_url(target: Target) -> str:
    return target.dicomweb[:-len("/dicom-web")] if target.dicomweb.endswith("/dicom-web") else target.dicomweb


def _timed_download(session: requests.Session, url: str, params=None) -> tuple[float, int]:
    """Seconds to the last byte of a streamed GET and the bytes received (checked against
    Content-Length when there is one)."""
    started = time.perf_counter()
    with session.get(url, params=params, stream=True, timeout=TIMEOUT) as response:
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: HTTP {response.status_code} {response.text[:200]}")
        received = sum(len(chunk) for chunk in response.iter_content(1 << 20))
        length = response.headers.get("Content-Length")
    if length is not None and int(length) != received:
        raise RuntimeError(f"GET {url}: {received} bytes, Content-Length {length}")
    return time.perf_counter() - started, received


def archive(target: Target, data: FileSet, reps: int, slice_count: int = 50) -> dict[str, float]:
    """The CBCT study as one zip: ours ``/api/v1/studies/{s}/archive`` (stored entries), Orthanc's
    ``/studies/{id}/archive``; then (ours only) ``?slices=`` of ``slice_count`` slices from the
    middle of the series. Rates are of the study's bytes (Orthanc's zip may be compressed); the
    server's peak RSS is taken over each phase."""
    base = _base_url(target)
    out: dict[str, float] = {}
    with requests.Session() as session:
        session.headers.update(target.headers)
        if target.name == "orthanc":
            found = session.post(f"{base}/tools/lookup", data=data.study_uid, timeout=60).json()
            study_id = next(item["ID"] for item in found if item["Type"] == "Study")
            phases = [("archive", f"{base}/studies/{study_id}/archive", None)]
        else:
            first = max(1, (len(data.paths) - slice_count) // 2 + 1)
            last = min(len(data.paths), first + slice_count - 1)
            study_url = f"{base}/api/v1/studies/{data.study_uid}/archive"
            phases = [("archive", study_url, None),
                      ("archive_slices", f"{base}/api/v1/studies/{data.study_uid}/series/{data.series_uid}/archive",
                       {"slices": f"{first}-{last}"}),
                      ("archive_deflate", study_url, {"compress": "deflate"})]
        for key, url, params in phases:
            started = time.perf_counter()
            runs = [_timed_download(session, url, params) for _ in range(1 if key == "archive_deflate" else reps)]
            out[f"{key}_peak_rss_mb"] = _peak(target, started)
            seconds = percentile([s for s, _ in runs], 50)
            out[f"{key}_s"] = seconds
            out[f"{key}_mb"] = runs[0][1] / MB
            out[f"{key}_ms"] = seconds * 1000
        out["archive_mb_per_s"] = data.bytes / MB / out["archive_s"]
        if target.name == "orthanc":  # its archive is deflated: the row to compare with our compress=deflate
            out["archive_deflate_mb_per_s"], out["archive_deflate_mb"] = out["archive_mb_per_s"], out["archive_mb"]
        if "archive_deflate_s" in out:
            out["archive_deflate_mb_per_s"] = data.bytes / MB / out["archive_deflate_s"]
    return out


def upload(target: Target, data: FileSet, clients: int = 4) -> dict[str, float]:
    """The CBCT as it arrives from a clinic's viewer: ours, one upload by ``proprietary.client``
    (``clients`` zip archives made on the fly, sent at once); Orthanc, which has no zip upload of its own, the
    files by ``POST /instances`` from ``clients`` clients; then both by STOW-RS from ``clients``
    clients of one request each (``len/clients`` instances a request)."""
    base = _base_url(target)
    out: dict[str, float] = {}
    half, rest = data.paths[:len(data.paths) // 2], data.paths[len(data.paths) // 2:]
    started = time.perf_counter()
    if target.name == "orthanc":
        orthanc_post_instances(base, half, clients)
    else:
        from proprietary.client import GatewayClient

        folder = half[0].parent / "zip-half"
        folder.mkdir(exist_ok=True)
        for path in half:
            target_path = folder / path.name
            if not target_path.exists():
                os.link(path, target_path)
        token = target.headers["Authorization"].split(" ", 1)[1]
        report = GatewayClient(base, token).upload([folder], expected=len(half), parallel=clients)
        if report.counts.get("stored") != len(half):
            raise RuntimeError(f"zip upload: {report.counts}")
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in half)
    out["upload_s"], out["upload_mb_per_s"] = seconds, size / MB / seconds
    out["upload_peak_rss_mb"] = _peak(target, started)
    stow = stow_paths(target.dicomweb, rest, -(-len(rest) // clients), clients, target.headers)
    out["upload_stow_mb_per_s"] = stow["mb_per_s"]
    return out


def _peak(target: Target, started: float) -> float:
    """The server's peak RSS (MB) since ``started``, with one sample taken now (a phase may be
    shorter than the sampling interval)."""
    return max(target.sampler.peak(started, time.perf_counter()), target.sampler.rss()) / MB


def with_peak(target: Target, key: str, func: Callable[[], dict]) -> dict[str, float]:
    """``func``'s figures, and the server's peak RSS while it ran as ``{key}_peak_rss_mb``."""
    started = time.perf_counter()
    values = func()
    values[f"{key}_peak_rss_mb"] = _peak(target, started)
    return values


# --- the floor ------------------------------------------------------------------------------------

def disk_floor(paths: list[Path], workdir: Path, prefix: str) -> dict[str, float]:
    """The same files written one by one with an fsync each (as a server stores instances
    durably), then read back: from the page cache (where a server finds files it has just
    written) and from the disk (after dropping them from the cache)."""
    folder = workdir / f"floor-{prefix}"
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    started = time.perf_counter()
    copies = []
    for path in paths:
        data = path.read_bytes()
        target = folder / path.name
        with open(target, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        total += len(data)
        copies.append(target)
    write_s = time.perf_counter() - started

    def read_all() -> float:
        started = time.perf_counter()
        for copy in copies:
            with open(copy, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        return time.perf_counter() - started

    cached_s = read_all()
    for copy in copies:  # drop them from the page cache: the next read goes to the disk
        with open(copy, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    uncached_s = read_all()
    shutil.rmtree(folder, ignore_errors=True)
    return {f"{prefix}_disk_write_mb_per_s": total / MB / write_s,
            f"{prefix}_disk_read_cached_mb_per_s": total / MB / cached_s,
            f"{prefix}_disk_read_mb_per_s": total / MB / uncached_s}


def floor_server(port: int, path: str) -> None:
    """A minimal HTTP/1.1 server (one connection at a time): POST bodies are read into a reused
    buffer and dropped, GET sends ``path`` with sendfile(2). Nothing a real server does less."""
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    size = os.path.getsize(path)
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn, conn.makefile("rb", buffering=0) as raw, open(path, "rb") as fh:
            reader = io.BufferedReader(raw, 1 << 16)
            while True:
                request = reader.readline()
                if not request:
                    break
                length, chunked = 0, False
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                    elif name.strip().lower() == "transfer-encoding":
                        chunked = "chunked" in value.lower()
                if request.startswith(b"POST"):
                    if chunked:  # dicomweb-client sends chunked bodies
                        while (chunk := int(reader.readline().split(b";")[0], 16)) > 0:
                            _drain(reader, view, chunk)
                            reader.readline()  # the CRLF after the chunk
                        while reader.readline() not in (b"\r\n", b""):  # trailers
                            pass
                    else:
                        _drain(reader, view, length)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                else:
                    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 f"Content-Length: {size}\r\n\r\n".encode())
                    fh.seek(0)
                    conn.sendfile(fh)


def _drain(reader, view: memoryview, length: int) -> None:
    while length > 0:
        got = reader.readinto(view[:min(length, len(view))])
        if not got:
            return
        length -= got


def http_floor(paths: list[Path], workdir: Path) -> dict[str, float]:
    """The same bytes through a minimal HTTP server on loopback (its own process), with the
    client code the workloads use: a multipart upload, a streamed download."""
    blob = workdir / "floor-http.bin"
    with open(blob, "wb") as out:
        for path in paths:
            out.write(path.read_bytes())
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.compare", "--floor-server", str(port), str(blob)],
                              cwd=ROOT)
    try:
        wait_port(port)
        client = stow_dicomweb_client(f"http://127.0.0.1:{port}", paths, check=False)
        body = MultipartFileBody(paths, "floor-boundary")
        size = len(body)
        with requests.Session() as session:
            started = time.perf_counter()
            session.post(f"http://127.0.0.1:{port}/upload", data=body, timeout=TIMEOUT).raise_for_status()
            upload_s = time.perf_counter() - started
            body.close()
            started = time.perf_counter()
            with session.get(f"http://127.0.0.1:{port}/download", stream=True, timeout=TIMEOUT) as response:
                got = sum(len(c) for c in response.iter_content(1 << 20))
            download_s = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(10)
        blob.unlink(missing_ok=True)
    return {"http_upload_mb_per_s": size / MB / upload_s, "http_download_mb_per_s": got / MB / download_s,
            "dicomweb_client_mb_per_s": client["mb_per_s"]}


# --- the run -----------------------------------------------------------------------------------------

def run_workload(name: str, targets: list[Target], index: int, func: Callable[[Target], dict]) -> None:
    """Run ``func`` on every target, the order rotated by ``index`` (alternation)."""
    order = targets[index % len(targets):] + targets[:index % len(targets)]
    for target in order:
        say(f"{name} on {target.label}")
        started = time.perf_counter()
        try:
            values = func(target)
        except Exception as exc:  # noqa: BLE001 - one target failing must not stop the comparison
            target.errors[name] = f"{type(exc).__name__}: {exc}"
            say(f"  failed: {target.errors[name][:300]}")
            continue
        target.results.update(values)
        say(f"  {time.perf_counter() - started:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in values.items()))


def compare(args) -> dict[str, Any]:
    from tests.services import MotoServer, PostgresDatabase

    results: dict[str, Any] = {"args": vars(args), "floor": {}, "targets": {}, "when": time.strftime("%Y-%m-%d %H:%M"),
                               "cpus": os.cpu_count()}
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-compare-", dir=args.workdir)))
        say(f"generating data in {root}")
        started = time.perf_counter()
        selected = WORKLOADS if args.workloads == "all" else [w.strip() for w in args.workloads.split(",")]
        unknown = set(selected) - set(WORKLOADS)
        if unknown:
            raise SystemExit(f"unknown workload(s) {sorted(unknown)}: choose from {', '.join(WORKLOADS)}")
        copies = 0

        def fresh_cbct() -> FileSet:
            """A copy of the CBCT with UIDs of its own (each ingest run stores new instances)."""
            nonlocal copies
            copies += 1
            return make_cbct(root / f"cbct-{copies}", args.slices, args.size, str(copies))

        cbct = fresh_cbct()
        intraoral = make_intraoral(root / "intraoral", args.intraoral if "stow-io" in selected else 0)
        corpus, patient_ids, prefixes = make_qido_corpus(args.qido_studies if {"stow-small", "qido"} & set(selected)
                                                         else 0)
        results["data"] = {"cbct_mb": cbct.bytes / MB, "cbct_instances": len(cbct.paths),
                           "intraoral_mb": intraoral.bytes / MB, "intraoral_instances": len(intraoral.paths),
                           "qido_studies": len(corpus), "generate_s": time.perf_counter() - started}
        say(f"data: CBCT {len(cbct.paths)} x {args.size}² ({cbct.bytes / MB:.0f} MB, a copy per ingest run), "
            f"{len(intraoral.paths)} intraoral ({intraoral.bytes / MB:.0f} MB), {len(corpus)} header-only studies")

        say("floor: disk and loopback HTTP")
        results["floor"] = {**disk_floor(cbct.paths, root, "cbct"), **cp_sync_floor(cbct.paths, root),
                            **(disk_floor(intraoral.paths[:100], root, "io") if intraoral.paths else {}),
                            **http_floor(cbct.paths, root)}
        say("  " + ", ".join(f"{k} {v:.0f}" for k, v in results["floor"].items()))

        targets: list[Target] = []
        for name in wanted:
            say(f"starting {LABELS.get(name, name)}")
            if name == "gateway":
                targets.append(start_gateway(stack, root, name, {}, args))
            elif name == "gateway-pg-s3":
                moto = MotoServer(log_dir=root).start()
                stack.callback(moto.stop)
                database = PostgresDatabase(args.pg)
                stack.callback(database.drop)
                storage = {"storage.index_backend": "postgresql", "storage.postgres_dsn": database.dsn,
                           **moto.settings(moto.create_bucket())}
                targets.append(start_gateway(stack, root, name, storage, args))
            elif name == "orthanc":
                targets.append(start_orthanc(stack, root))
            elif name == "pynetdicom":
                targets.append(start_bare_scp(stack, root))
            else:
                raise SystemExit(f"unknown target {name!r}")
        for target in targets:
            target.sampler = RssSampler(target.pid, interval=0.1)
            target.results["baseline_rss_mb"] = target.sampler.rss() / MB
            target.sampler.start()

        def ingest(name: str, prefix: str, func: Callable[[Target, FileSet], dict]):
            return name, lambda t: _prefixed(prefix, func(t, fresh_cbct()))

        available: dict[str, tuple[str, Callable[[Target], dict]]] = {
            "stow-cbct": ("STOW-RS CBCT", lambda t: _prefixed("stow_cbct", stow_paths(t.dicomweb, cbct.paths, 50, 3,
                                                                                     t.headers))),
            "stow-one": ingest("STOW-RS CBCT, one request (dicomweb-client)", "stow_one",
                               lambda t, d: stow_dicomweb_client(t.dicomweb, d.paths, t.headers)),
            "stow-1": ingest("STOW-RS CBCT, one request streamed from the files", "stow_single",
                             lambda t, d: stow_paths(t.dicomweb, d.paths, len(d.paths), 1, t.headers)),
            "stow-4": ingest("STOW-RS CBCT, 4 requests of 125 at once", "stow_four",
                             lambda t, d: stow_paths(t.dicomweb, d.paths, -(-len(d.paths) // 4), 4, t.headers)),
            "stow-io": ("STOW-RS intraoral", lambda t: _prefixed("stow_io", stow_paths(t.dicomweb, intraoral.paths, 1,
                                                                                       4, t.headers))),
            "cstore": ingest("C-STORE CBCT", "cstore", lambda t, d: c_store(t, d.paths)),
            "cstore-4": ingest("C-STORE CBCT, 4 associations", "cstore_four",
                               lambda t, d: c_store_parallel(t, d.paths, 4)),
            "import": ingest("import of a folder", "import", lambda t, d: import_folder(t, d)),
            "stow-small": ("STOW-RS header-only studies",
                           lambda t: _prefixed("stow_small", stow_bytes(t.dicomweb, corpus, 100, 2, t.headers))),
            "qido": ("QIDO", lambda t: _prefixed("qido", qido(t.dicomweb, patient_ids, prefixes, args.qido_reps,
                                                              t.headers))),
            "wado": ("WADO-RS", lambda t: with_peak(t, "retrieve", lambda: retrieve(t.dicomweb, cbct, args.retrieve_reps,
                                                                                    args.metadata_reps, t.headers))),
            "archive": ("zip archive", lambda t: archive(t, cbct, args.retrieve_reps)),
            "upload": ("zip upload", lambda t: upload(t, fresh_cbct())),
        }
        assert list(available) == WORKLOADS
        if "stow-cbct" not in selected and {"wado", "archive"} & set(selected):
            selected.insert(0, "stow-cbct")  # they read the CBCT that it stores
        index = 0
        for round_ in range(args.rounds):
            for key in [w for w in WORKLOADS if w in selected]:
                name, func = available[key]
                if args.rounds > 1:
                    name = f"{name} (round {round_ + 1})"
                run_workload(name, [t for t in targets if not t.dimse_only or key in DIMSE_WORKLOADS], index, func)
                index += 1
            for target in targets:
                target.rounds.append(dict(target.results))
                target.results.clear()
        for target in targets:
            target.sampler.stop()
            target.results = _medians(target.rounds)
            target.results["peak_rss_mb"] = target.sampler.peak() / MB
            results["targets"][target.name] = {"label": target.label, **target.results, "errors": target.errors}
    return results


WORKLOADS = ["stow-cbct", "stow-one", "stow-1", "stow-4", "stow-io", "cstore", "cstore-4", "import", "stow-small", "qido",
             "wado", "archive", "upload"]
DIMSE_WORKLOADS = {"cstore", "cstore-4"}


def _medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds that measured it."""
    import statistics

    keys = {k for r in rounds for k in r}
    return {k: statistics.median(r[k] for r in rounds if k in r) for k in sorted(keys)}


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


# --- the table ----------------------------------------------------------------------------------------

# (key, label, unit, higher is better, floor key(s) or None)
ROWS = [
    ("stow_cbct_mb_per_s", "STOW-RS CBCT, 50/request, 3 in flight", "MB/s", True,
     ("http_upload_mb_per_s", "cbct_disk_write_mb_per_s")),
    ("stow_cbct_inst_per_s", "STOW-RS CBCT", "inst/s", True, None),
    ("stow_one_mb_per_s", "STOW-RS CBCT, one request (dicomweb-client)", "MB/s", True,
     ("dicomweb_client_mb_per_s", "cbct_cp_sync_mb_per_s")),
    ("stow_single_mb_per_s", "STOW-RS CBCT, one request streamed from the files (requests)", "MB/s", True,
     ("http_upload_mb_per_s", "cbct_cp_sync_mb_per_s")),
    ("stow_four_mb_per_s", "STOW-RS CBCT, 4 requests of 125 at once", "MB/s", True,
     ("http_upload_mb_per_s", "cbct_cp_sync_mb_per_s")),
    ("stow_io_inst_per_s", "STOW-RS intraoral, 1/request, 4 in flight", "inst/s", True, None),
    ("stow_io_mb_per_s", "STOW-RS intraoral", "MB/s", True, ("http_upload_mb_per_s", "io_disk_write_mb_per_s")),
    ("cstore_mb_per_s", "C-STORE CBCT (storescu, 1 association)", "MB/s", True, ("cbct_disk_write_mb_per_s",)),
    ("cstore_inst_per_s", "C-STORE CBCT", "inst/s", True, None),
    ("cstore_four_mb_per_s", "C-STORE CBCT, 4 associations at once (storescu)", "MB/s", True,
     ("cbct_cp_sync_mb_per_s",)),
    ("import_mb_per_s", "import of the CBCT folder (ours: gateway import; Orthanc: POST /instances, 4 clients)",
     "MB/s", True, ("cbct_cp_sync_mb_per_s",)),
    ("stow_small_inst_per_s", "STOW-RS header-only studies, 100/request", "inst/s", True, None),
    ("qido_ohif_list_p50_ms", "QIDO OHIF study list (limit=101) p50", "ms", False, None),
    ("qido_ohif_list_p99_ms", "QIDO OHIF study list p99", "ms", False, None),
    ("qido_patient_id_p50_ms", "QIDO exact PatientID p50", "ms", False, None),
    ("qido_patient_id_p99_ms", "QIDO exact PatientID p99", "ms", False, None),
    ("qido_name_prefix_p50_ms", "QIDO PatientName prefix* p50", "ms", False, None),
    ("qido_name_prefix_p99_ms", "QIDO PatientName prefix* p99", "ms", False, None),
    ("retrieve_mb_per_s", "WADO-RS series retrieve (transfer-syntax=*)", "MB/s", True,
     ("http_download_mb_per_s", "cbct_disk_read_cached_mb_per_s")),
    ("metadata_first_ms", "WADO-RS series metadata, first", "ms", False, None),
    ("metadata_p50_ms", "WADO-RS series metadata p50", "ms", False, None),
    ("metadata_p99_ms", "WADO-RS series metadata p99", "ms", False, None),
    ("archive_mb_per_s", "zip of the CBCT study (ours: stored entries; Orthanc: /studies/{id}/archive, deflated)",
     "MB/s", True,
     ("http_download_mb_per_s", "cbct_disk_read_cached_mb_per_s")),
    ("archive_mb", "zip of the CBCT study, size", "MB", False, None),
    ("upload_mb_per_s", "upload of half the CBCT (ours: one upload, 4 zips at once; Orthanc: POST /instances, "
     "4 clients)", "MB/s", True, ("http_upload_mb_per_s", "cbct_disk_write_mb_per_s")),
    ("upload_stow_mb_per_s", "STOW-RS of the other half, 4 clients of one request each", "MB/s", True,
     ("http_upload_mb_per_s",)),
    ("upload_peak_rss_mb", "peak RSS during the upload", "MB", False, None),
    ("archive_deflate_mb_per_s", "zip of the CBCT study, deflated (ours: compress=deflate; Orthanc: as above)",
     "MB/s", True, None),
    ("archive_deflate_mb", "zip of the CBCT study, deflated, size", "MB", False, None),
    ("archive_ms", "zip of the CBCT study, time to the last byte", "ms", False, None),
    ("archive_slices_ms", "zip of 50 slices (?slices=, ours only), time to the last byte", "ms", False, None),
    ("retrieve_peak_rss_mb", "peak RSS during WADO-RS (series retrieve and metadata)", "MB", False, None),
    ("archive_peak_rss_mb", "peak RSS during the study zip", "MB", False, None),
    ("archive_slices_peak_rss_mb", "peak RSS during the 50-slice zip", "MB", False, None),
    ("peak_rss_mb", "peak RSS of the server (process tree)", "MB", False, None),
]


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _ratio(ours: float | None, theirs: float | None, higher: bool) -> str:
    if not ours or not theirs:
        return "–"
    return f"{(ours / theirs if higher else theirs / ours):.2f}×"


def markdown(results: dict[str, Any]) -> str:
    targets = results["targets"]
    floor = results["floor"]
    names = [n for n in ("gateway", "gateway-pg-s3", "orthanc", "pynetdicom") if n in targets]
    ours = [n for n in names if n in ("gateway", "gateway-pg-s3")]
    header = ["metric", "floor"] + [targets[n]["label"] for n in names]
    if "orthanc" in targets:
        header += [f"{LABELS[n].split(' (')[1].rstrip(')')} ÷ Orthanc" for n in ours]
    if "gateway" in targets:
        header.append("SQLite + folder ÷ floor")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for key, label, unit, higher, floor_keys in ROWS:
        if not any(targets[n].get(key) is not None for n in names):
            continue  # a workload this run left out
        floor_value = min(floor[k] for k in floor_keys) if floor_keys and all(k in floor for k in floor_keys) else None
        cells = [f"{label} ({unit})", _fmt(floor_value)]
        cells += [_fmt(targets[n].get(key)) for n in names]
        if "orthanc" in targets:
            cells += [_ratio(targets[n].get(key), targets["orthanc"].get(key), higher) for n in ours]
        if "gateway" in targets:
            cells.append(_ratio(targets["gateway"].get(key), floor_value, True) if floor_value else "–")
        lines.append("| " + " | ".join(cells) + " |")
    f = {k: round(v) for k, v in floor.items()}
    notes = ["Ratios: > 1× means ours is better (more throughput, less latency or memory). Floor: the lower of "
             "loopback HTTP and disk for the same bytes on this machine: files written one by one with an fsync "
             f"each (CBCT slices {f.get('cbct_disk_write_mb_per_s')} MB/s, intraoral images "
             f"{f.get('io_disk_write_mb_per_s')} MB/s; `cp` of the CBCT then `sync` {f.get('cbct_cp_sync_mb_per_s')} "
             "MB/s), read back from the page cache "
             f"{f.get('cbct_disk_read_cached_mb_per_s')} MB/s (from the disk {f.get('cbct_disk_read_mb_per_s')} MB/s), "
             f"a minimal HTTP server on loopback (sendfile), with the same client code: upload {f.get('http_upload_mb_per_s')} MB/s, download "
             f"{f.get('http_download_mb_per_s')} MB/s; dicomweb-client's one request to that server (its encoding "
             f"included) {f.get('dicomweb_client_mb_per_s')} MB/s."]
    for n in ours:
        t = targets[n]
        if t.get("archive_mb_per_s") and t.get("retrieve_mb_per_s"):
            notes.append(f"{t['label']}: the study zip at {t['archive_mb_per_s'] / t['retrieve_mb_per_s']:.2f}× the "
                         "WADO-RS series retrieve's throughput; the 50-slice zip in "
                         f"{t.get('archive_slices_s', 0) / t['archive_s']:.3f} of the whole's time "
                         f"({t.get('archive_slices_mb', 0) / t['archive_mb']:.3f} of its bytes).")
    for n in names:
        for phase, error in targets[n].get("errors", {}).items():
            notes.append(f"{targets[n]['label']}: {phase} failed: {error[:200]}")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


# --- entry point -------------------------------------------------------------------------------------------

def in_private_namespace() -> bool:
    from bench.orthanc import only_loopback

    return only_loopback()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--floor-server"]:
        floor_server(int(argv[1]), argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=500)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--intraoral", type=int, default=1000, help="intraoral images (1000 x 1300, 16-bit) to store")
    p.add_argument("--qido-studies", type=int, default=5000, help="header-only studies loaded for QIDO")
    p.add_argument("--qido-reps", type=int, default=100, help="requests per QIDO query kind")
    p.add_argument("--retrieve-reps", type=int, default=3)
    p.add_argument("--metadata-reps", type=int, default=20)
    p.add_argument("--targets", default="gateway,gateway-pg-s3,orthanc",
                   help="of gateway, gateway-pg-s3, orthanc, pynetdicom (a bare storage SCP: C-STORE rows only)")
    p.add_argument("--workloads", default="all", help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    p.add_argument("--rounds", type=int, default=1, help="run the workloads this many times; medians are reported")
    p.add_argument("--pg", default=os.environ.get("GATEWAY_BENCH_POSTGRES", DEFAULT_PG),
                   help="admin DSN of a PostgreSQL where the bench may create and drop a database (Unix socket)")
    p.add_argument("--workdir", help="parent folder of the run's data and servers (default: system temp)")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--json", help="also write all numbers to this file")
    p.add_argument("--no-namespace", action="store_true", help="do not re-execute under unshare -n (no Orthanc)")
    p.add_argument("--gateway-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="an extra gateway setting (dotted name), e.g. for authentication; repeatable")
    p.add_argument("--token", help="bearer token sent to the gateway targets")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if "orthanc" in args.targets and not in_private_namespace() and not args.no_namespace:
        if shutil.which("unshare") is None:
            p.error("Orthanc needs a private network namespace: unshare (util-linux) is missing")
        say("re-executing inside a private network namespace (unshare -n)")
        return subprocess.call(["unshare", "-n", sys.executable, "-m", "bench.compare", *argv], cwd=ROOT)
    if in_private_namespace():
        from bench.orthanc import ensure_loopback_up

        ensure_loopback_up()
    elif "orthanc" in args.targets:
        args.targets = ",".join(t for t in args.targets.split(",") if t.strip() != "orthanc")
        say("Orthanc left out: not in a private network namespace")
    for tool in ("storescu",):
        if shutil.which(tool) is None:
            p.error(f"{tool} is missing: apt-get install -y dcmtk")

    started = time.perf_counter()
    results = compare(args)
    results["total_s"] = time.perf_counter() - started
    table = markdown(results)
    print(table)
    say(f"done in {results['total_s']:.0f} s")
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 1 if any(t.get("errors") for t in results["targets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
