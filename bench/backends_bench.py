"""Benchmark the storage backends: embedded (SQLite + folder) against production
(PostgreSQL + S3), and Orthanc beside them where it can run.

    python -m bench.backends_bench frontdoor [--slices 200 --size 512] [--json out.jsonl]
    python -m bench.backends_bench qido [--studies 10000 --series-per-study 2
                                         --instances-per-series 50] [--orthanc] [--json out.jsonl]

``frontdoor`` runs :mod:`bench.dicomweb_bench` (STOW, QIDO, metadata, retrieve, frames) once
against a gateway on SQLite + a folder and once against a gateway on PostgreSQL + S3
(``moto_server`` on loopback stands in for S3: it keeps objects in memory, so S3's network
latency is *not* in these numbers), then prints them side by side.

``qido`` fills an index with synthetic rows in bulk (``COPY`` on PostgreSQL, one
``executemany`` transaction on SQLite; 10,000 studies / 1,000,000 instances by default), starts
a gateway on each (blobs on a folder: only the index is measured) and measures QIDO-RS over
HTTP, client side to the last byte: p50/p99 with one client, and the default study list with
8 clients. It also measures, in process, the name searches with the PostgreSQL store's
"sort after filtering" order turned off, to show the planner trap (a rare name walks the whole date index). With
``--orthanc`` (only inside ``unshare -n``, see bench/README.md) Orthanc is loaded with the first
10,000 studies (one small instance each: Orthanc cannot take synthetic index rows) and gets
the same queries.

Needs the machine's PostgreSQL (``--pg``, default the Unix socket, which also works inside a
network namespace) and ``moto[server]``. Not a test: nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402
from tests.services import MotoServer, PostgresDatabase, env_of  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_PG = "host=/var/run/postgresql user=postgres dbname=postgres"
CLINIC = "default"  # the clinic every request of the gateway acts for (no authentication yet)
CT, EXPLICIT_LE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
OHIF_LIST = {"limit": "101", "offset": "0", "fuzzymatching": "false",
             "includefield": "00081030,00080060"}

COMMON_FAMILY = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
                 "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
                 "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Lewis",
                 "Robinson", "Walker", "Muller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner",
                 "Becker", "Schulz", "Hoffmann", "Kim", "Park", "Nguyen", "Tran", "Wang", "Li", "Zhang", "Chen"]
GIVEN = ["Anna", "John", "Maria", "David", "Laura", "Peter", "Sofia", "Lukas", "Emma", "Noah", "Mia", "Jonas",
         "Lea", "Paul", "Hana", "Minjun", "Seoyeon", "Wei", "Linh", "Carlos", "Lucia", "Omar", "Fatima", "Ivan"]
SYLLABLES = ["ka", "ri", "mo", "tan", "ber", "son", "li", "vak", "mul", "ler", "dor", "zen", "qui", "pa", "rov",
             "ste", "nu", "gal", "hei", "wo", "xe", "bru", "fin", "jas", "oke", "ty", "ulm", "yor"]


# --- helpers ---------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def timed_get(session: requests.Session, url: str, params: dict | None = None) -> tuple[float, int]:
    started = time.perf_counter()
    response = session.get(url, params=params, timeout=120)
    _ = response.content  # to the last byte
    return (time.perf_counter() - started) * 1000, response.status_code


def pg_admin(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


class Gateway:
    """``gateway serve`` in a subprocess (the test suite's launcher)."""

    def __init__(self, root: Path, label: str, settings: dict[str, Any]):
        self.label = label
        self.server = ServerProcess(root / label, env=env_of({"dimse.enabled": "false", "server.threads": 8,
                                                              "log.level": "warning", **settings}))

    def __enter__(self) -> "Gateway":
        self.server.start(timeout=120)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


def dimse_setting() -> dict[str, str]:
    from gateway.config import SETTINGS

    return {"dimse.enabled": "false"} if any(s.name == "dimse.enabled" for s in SETTINGS) else {}


# --- front door: bench.dicomweb_bench on both stacks --------------------------------------------

def frontdoor(args) -> list[dict[str, Any]]:
    out = Path(args.json or tempfile.mktemp(suffix=".jsonl"))
    lines_before = len(out.read_text().splitlines()) if out.exists() else 0
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="backends-bench-")))
        moto = MotoServer(log_dir=root).start()
        stack.callback(moto.stop)
        bucket = moto.create_bucket()
        database = PostgresDatabase(args.pg)
        stack.callback(database.drop)
        targets = {
            "sqlite+folder": {"storage.fsync": "false"},
            "postgresql+s3": {"storage.fsync": "false", "storage.index_backend": "postgresql",
                              "storage.postgres_dsn": database.dsn, **moto.settings(bucket)},
        }
        for label, settings in targets.items():
            with Gateway(root, label, {**dimse_setting(), **settings}) as gw:
                command = [sys.executable, "-m", "bench.dicomweb_bench", "--url", gw.server.dicomweb,
                           "--pid", str(gw.server.proc.pid), "--label", label, "--json", str(out),
                           "--slices", str(args.slices), "--size", str(args.size), "--workdir", str(root)]
                if getattr(gw.server, "token", None):
                    command += ["--token", gw.server.token]
                print(f"# front door on {label}", flush=True)
                subprocess.run(command, cwd=ROOT, check=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()[lines_before:] if line.strip()]
    subprocess.run([sys.executable, "-m", "bench.dicomweb_bench", "--compare", str(out)], cwd=ROOT, check=False)
    return lines


# --- QIDO on a large index -------------------------------------------------------------------------

def synthetic(n_studies: int, series_per_study: int, instances_per_series: int,
              seed: int = 7) -> Iterator[tuple[tuple, list[tuple], list[tuple]]]:
    """(study row, series rows, instance rows) of clinic ``default``, ids from 1."""
    rng = random.Random(seed)
    n_patients = max(1, n_studies // 2)
    rare = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).title() for _ in range(3000)]
    series_id = instance_id = 0
    start = date(2014, 1, 1)
    for study_id in range(1, n_studies + 1):
        patient = rng.randrange(n_patients)
        prng = random.Random(patient)
        family = prng.choice(COMMON_FAMILY) if prng.random() < 0.5 else prng.choice(rare)
        name = f"{family}^{prng.choice(GIVEN)}"
        study_date = None if rng.random() < 0.01 else (start + timedelta(days=rng.randrange(3650))).strftime("%Y%m%d")
        study_uid = f"2.25.{study_id}.{rng.getrandbits(40)}"
        modality = rng.choice(["CT", "PX", "IO", "IO", "PX"])
        study = (study_id, CLINIC, study_uid, f"P{patient:07d}", name, name.lower(), f"{prng.randint(1940, 2015)}0101",
                 prng.choice("MF"), study_date, f"{rng.randrange(8, 18):02d}{rng.randrange(60):02d}00",
                 f"ACC{study_id:08d}", "Dental^Doctor", "dental^doctor", f"S{study_id}",
                 rng.choice(["CBCT", "Panoramic", "Intraoral", "Bitewing"]), f"\\{modality}\\", series_per_study,
                 series_per_study * instances_per_series, "{}")
        series_rows, instance_rows = [], []
        for s in range(series_per_study):
            series_id += 1
            series_uid = f"{study_uid}.{s + 1}"
            series_rows.append((series_id, study_id, CLINIC, series_uid, modality, s + 1, "synthetic",
                                instances_per_series, "{}"))
            for i in range(instances_per_series):
                instance_id += 1
                sop = f"{series_uid}.{i + 1}"
                instance_rows.append((instance_id, series_id, study_id, CLINIC, sop, CT, i + 1, 512, 512, 16, 1,
                                      EXPLICIT_LE, f"dicom/{CLINIC}/{study_uid}/{series_uid}/{sop}.0.dcm", 524_800,
                                      "0" * 64, '{"00080018":{"vr":"UI","Value":["%s"]}}' % sop))
        yield study, series_rows, instance_rows


STUDY_COLS = ("id", "clinic_id", "study_uid", "patient_id", "patient_name", "patient_name_alpha",
              "patient_birth_date", "patient_sex", "study_date", "study_time", "accession_number",
              "referring_physician_name", "referring_physician_name_alpha", "study_id", "study_description",
              "modalities", "num_series", "num_instances", "study_json")
SERIES_COLS = ("id", "study_pk", "clinic_id", "series_uid", "modality", "series_number", "series_description",
               "num_instances", "series_json")
INSTANCE_COLS = ("id", "series_pk", "study_pk", "clinic_id", "sop_uid", "sop_class_uid", "instance_number",
                 "rows", "columns", "bits_allocated", "number_of_frames", "transfer_syntax", "blob_key", "size",
                 "sha256", "header_json")


def load_postgres(dsn: str, args) -> None:
    from storage.index.postgres import PostgresIndexStore

    store = PostgresIndexStore(dsn)
    store.migrate()
    store.close()
    with pg_admin(dsn) as conn, conn.cursor() as cur:
        # Table by table (one COPY at a time), generating the rows again each time (bounded memory).
        for table, cols, pick in (("studies", STUDY_COLS, lambda r: [r[0]]), ("series", SERIES_COLS, lambda r: r[1]),
                                  ("instances", INSTANCE_COLS, lambda r: r[2])):
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for item in synthetic(args.studies, args.series_per_study, args.instances_per_series):
                    for row in pick(item):
                        copy.write_row(row)
        for table in ("studies", "series", "instances"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.execute("VACUUM ANALYZE")


def load_sqlite(path: Path, args) -> None:
    from storage.index.sqlite import SqliteIndexStore

    store = SqliteIndexStore(path)
    store.migrate()
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    for study, series, instances in synthetic(args.studies, args.series_per_study, args.instances_per_series):
        conn.execute(f"INSERT INTO studies ({', '.join(STUDY_COLS)}) VALUES ({', '.join('?' * len(STUDY_COLS))})",
                     study)
        conn.executemany(f"INSERT INTO series ({', '.join(SERIES_COLS)}) "
                         f"VALUES ({', '.join('?' * len(SERIES_COLS))})", series)
        conn.executemany(f"INSERT INTO instances ({', '.join(INSTANCE_COLS)}) "
                         f"VALUES ({', '.join('?' * len(INSTANCE_COLS))})", instances)
    conn.execute("COMMIT")
    conn.close()


def query_mix(args, rng: random.Random) -> dict[str, Callable[[], tuple[str, dict]]]:
    """Query kinds: each call gives (path, params) of one request."""
    sample = list(synthetic(args.studies, args.series_per_study, 1))
    studies = [s for s, _, _ in sample]
    series = {s[0]: rows[0][3] for s, rows, _ in sample}
    prefixes = sorted({s[5].split("^")[0][:3] for s in studies})
    missing = ["zzq", "qxw", "jjv", "xqa", "wvv"]
    return {
        "default list (OHIF)": lambda: ("studies", OHIF_LIST),
        "deep page offset=9000": lambda: ("studies", {**OHIF_LIST, "offset": str(min(9000, args.studies - 101))}),
        "name prefix (existing)": lambda: ("studies", {**OHIF_LIST, "PatientName": rng.choice(prefixes) + "*"}),
        "name prefix (no match)": lambda: ("studies", {**OHIF_LIST, "PatientName": rng.choice(missing) + "*"}),
        "name fuzzy word": lambda: ("studies", {**OHIF_LIST, "fuzzymatching": "true",
                                                "PatientName": rng.choice(prefixes)}),
        "name infix *x*": lambda: ("studies", {**OHIF_LIST, "PatientName": f"*{rng.choice(prefixes)[1:]}*"}),
        "exact PatientID": lambda: ("studies", {"PatientID": rng.choice(studies)[3]}),
        "exact StudyInstanceUID": lambda: ("studies", {"StudyInstanceUID": rng.choice(studies)[2]}),
        "series of a study": lambda: (f"studies/{rng.choice(studies)[2]}/series", {}),
        "instances of a series": lambda: ("studies/{}/series/{}/instances".format(
            *(lambda s: (s[2], series[s[0]]))(rng.choice(studies))), {}),
    }


def measure_http(base: str, mix, reps: int, headers: dict | None = None) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    session = requests.Session()
    session.headers.update(headers or {})
    for name, make in mix.items():
        for _ in range(5):  # warm-up
            timed_get(session, f"{base}/{make()[0]}", make()[1])
        times, statuses = [], set()
        for _ in range(reps):
            path, params = make()
            ms, status = timed_get(session, f"{base}/{path}", params)
            times.append(ms)
            statuses.add(status)
        results[name] = {"p50": percentile(times, 50), "p99": percentile(times, 99), "status": sorted(statuses)}
        print(f"  {name:<26} p50 {results[name]['p50']:8.1f} ms  p99 {results[name]['p99']:8.1f} ms  "
              f"{sorted(statuses)}", flush=True)
    # The default list with 8 clients at once.
    times: list[float] = []
    lock = threading.Lock()

    def client(_):
        own = requests.Session()
        own.headers.update(headers or {})
        for _ in range(max(10, reps // 4)):
            ms, _status = timed_get(own, f"{base}/studies", OHIF_LIST)
            with lock:
                times.append(ms)

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    elapsed = time.perf_counter() - started
    results["default list, 8 clients"] = {"p50": percentile(times, 50), "p99": percentile(times, 99),
                                          "req_per_s": len(times) / elapsed}
    print(f"  {'default list, 8 clients':<26} p50 {percentile(times, 50):8.1f} ms  p99 {percentile(times, 99):8.1f} "
          f"ms  {len(times) / elapsed:.0f} req/s", flush=True)
    return results


def measure_fence(dsn: str, args, reps: int) -> dict[str, dict[str, float]]:
    """In process: the PostgreSQL name searches with and without the sort-after-filter order."""
    from storage.index.postgres import PostgresIndexStore
    from storage.query import Match, Query

    rng = random.Random(3)
    studies = [s for s, _, _ in synthetic(args.studies, 1, 1)]
    prefixes = sorted({s[5].split("^")[0][:3] for s in studies}) + ["zzq", "qxw", "jjv"]
    store = PostgresIndexStore(dsn)
    out = {}
    try:
        for fenced in (True, False):
            store.fence_selective_searches = fenced
            times = []
            for _ in range(reps):
                query = Query(level="study", clinic_id=CLINIC, limit=101,
                              matches=[Match("PatientName", "wildcard", rng.choice(prefixes) + "*")])
                started = time.perf_counter()
                store.instances.search(query)
                times.append((time.perf_counter() - started) * 1000)
            key = "name prefix, sorted after filtering" if fenced else "name prefix, planner's choice (trap)"
            out[key] = {"p50": percentile(times, 50), "p99": percentile(times, 99), "max": max(times)}
            print(f"  {key:<40} p50 {out[key]['p50']:7.2f} ms  p99 {out[key]['p99']:7.2f} ms  "
                  f"max {out[key]['max']:7.2f} ms", flush=True)
    finally:
        store.close()
    return out


def query_plans(store, args) -> dict[str, list[str]]:
    """The plan of each common study search (``explain``), printed: each must use an index."""
    from storage.query import Match, Query

    studies = [s for s, _, _ in synthetic(args.studies, 1, 1)]
    shapes = {"default list (OHIF)": [], "exact PatientID": [Match("PatientID", "single", studies[7][3])],
              "name prefix (existing)": [Match("PatientName", "wildcard", studies[7][5][:3] + "*")],
              "name prefix (no match)": [Match("PatientName", "wildcard", "zzq*")],
              "exact AccessionNumber": [Match("AccessionNumber", "single", studies[7][10])]}
    plans = {}
    for name, matches in shapes.items():
        plans[name] = store.instances.explain(Query(level="study", clinic_id=CLINIC, limit=101, matches=matches))
        print(f"  {name:<26} " + " | ".join(plans[name]), flush=True)
    return plans


def load_orthanc(orthanc_url: str, args) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    def part10(study: tuple) -> bytes:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
        sop = study[2] + ".1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = CT, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study[2], study[2] + ".1"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = study[3], study[4], study[6], study[7]
        if study[8]:
            ds.StudyDate = study[8]
        ds.StudyTime, ds.AccessionNumber, ds.StudyDescription = study[9], study[10], study[14]
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = study[15].strip("\\"), 1, 1
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    studies = [s for s, _, _ in synthetic(min(args.studies, args.orthanc_studies), 1, 1)]
    session_local = threading.local()

    def post(study):
        session = getattr(session_local, "s", None) or requests.Session()
        session_local.s = session
        response = session.post(f"{orthanc_url}/instances", data=part10(study), timeout=60)
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, studies))
    print(f"  loaded {len(studies)} studies into Orthanc in {time.perf_counter() - started:.0f} s", flush=True)


def qido(args) -> dict[str, Any]:
    results: dict[str, Any] = {"studies": args.studies,
                               "instances": args.studies * args.series_per_study * args.instances_per_series}
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="backends-qido-")))
        rng = random.Random(11)
        mix = query_mix(args, rng)
        database = PostgresDatabase(args.pg)
        stack.callback(database.drop)

        started = time.perf_counter()
        load_postgres(database.dsn, args)
        results["load_postgres_s"] = time.perf_counter() - started
        started = time.perf_counter()
        load_sqlite(root / "index.sqlite3", args)
        results["load_sqlite_s"] = time.perf_counter() - started
        print(f"# loaded {results['studies']} studies / {results['instances']} instances: PostgreSQL "
              f"{results['load_postgres_s']:.0f} s, SQLite {results['load_sqlite_s']:.0f} s", flush=True)

        from storage.index.postgres import PostgresIndexStore
        from storage.index.sqlite import SqliteIndexStore

        results["plans"] = {}
        for label, store in (("sqlite", SqliteIndexStore(root / "index.sqlite3")),
                             ("postgresql", PostgresIndexStore(database.dsn))):
            print(f"# query plans on {label}", flush=True)
            try:
                results["plans"][label] = query_plans(store, args)
            finally:
                store.close()

        targets = {
            "sqlite": {"storage.sqlite_path": str(root / "index.sqlite3")},
            "postgresql": {"storage.index_backend": "postgresql", "storage.postgres_dsn": database.dsn},
        }
        for label, settings in targets.items():
            print(f"# QIDO on {label}", flush=True)
            with Gateway(root, label, {**dimse_setting(), "storage.fsync": "false", **settings}) as gw:
                token = getattr(gw.server, "token", None)
                results[label] = measure_http(gw.server.dicomweb, mix, args.reps,
                                              {"Authorization": f"Bearer {token}"} if token else None)
        print("# PostgreSQL name prefix searches in process, 1 client", flush=True)
        results["postgresql_in_process"] = measure_fence(database.dsn, args, args.reps * 2)

        if args.orthanc:
            from bench.orthanc import Orthanc, only_loopback

            if not only_loopback():
                print("# Orthanc skipped: run inside `unshare -n` (see bench/README.md)", flush=True)
            else:
                print(f"# QIDO on Orthanc ({min(args.studies, args.orthanc_studies)} studies, 1 instance each)",
                      flush=True)
                with Orthanc() as orthanc:
                    load_orthanc(orthanc.url, args)
                    small = dict(mix)
                    small.pop("series of a study")
                    small.pop("instances of a series")  # its studies have other series UIDs
                    results["orthanc"] = measure_http(orthanc.dicomweb_url, small, max(20, args.reps // 4))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["frontdoor", "qido"])
    p.add_argument("--pg", default=os.environ.get("GATEWAY_BENCH_POSTGRES", DEFAULT_PG),
                   help="admin DSN of a PostgreSQL where the bench may create a database")
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--studies", type=int, default=10_000)
    p.add_argument("--series-per-study", type=int, default=2)
    p.add_argument("--instances-per-series", type=int, default=50)
    p.add_argument("--reps", type=int, default=200, help="requests per query kind (one client)")
    p.add_argument("--orthanc", action="store_true", help="also Orthanc (only inside unshare -n)")
    p.add_argument("--orthanc-studies", type=int, default=10_000)
    p.add_argument("--json", help="append the results as JSON lines to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.what == "frontdoor":
        frontdoor(args)
        return 0
    results = qido(args)
    results["run"] = uuid.uuid4().hex[:8]
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps({"qido": results}) + "\n")
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
