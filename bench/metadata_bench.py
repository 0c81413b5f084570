"""Benchmark the image metadata API: GET and PATCH latency with 8 clients, per metadata store.

    python -m bench.metadata_bench [--stores sqlite,postgresql,dynamodb] [--images 200]
                                   [--requests 400] [--clients 8] [--pg DSN] [--json out.jsonl]

For each store a ``gateway serve`` is started on loopback (SQLite: the embedded index, whose
tables hold the metadata; PostgreSQL: a fresh database on the machine's server; DynamoDB:
``moto_server`` on loopback, table made by ``gateway metadata-table create`` — moto keeps
items in memory in one Python process, so DynamoDB's network latency is *not* in its
numbers). ``--images`` CT instances are stored by STOW-RS and each gets a record (PUT with
``If-None-Match: *``). Then ``--clients`` threads, each with its own HTTP session, run
``--requests`` requests each, split between

- ``GET /api/v1/metadata/{key}`` of a random image, and
- ``GET`` then ``PATCH …/viewer-state`` with its ETag (a client's edit; a 412, when another
  client wrote the same record in between, is counted and retried with the current version);

measured client side to the last byte. Output: p50/p99 of each, requests/s, the 412 count, the
503 count (a store failure: that edit is given up, and the first message is printed),
as a markdown table (and JSON lines with ``--json``). Not a test: nothing asserts on time.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402
from tests.services import MotoServer, PostgresDatabase, dicom_instance, env_of, stow  # noqa: E402

DEFAULT_PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def _prepare(server: ServerProcess, images: int) -> list[str]:
    from pydicom.uid import generate_uid

    keys = []
    study = generate_uid()
    for start in range(0, images, 50):
        batch = []
        for _ in range(min(50, images - start)):
            series, sop = generate_uid(), generate_uid()
            batch.append(dicom_instance(study, series, sop, size=16))
            keys.append(f"{study}/{series}/{sop}/original")
        response = stow(server.url, batch, headers=server.auth_headers)
        assert response.status_code == 200, response.text
    for key in keys:
        response = server.http.put(f"{server.url}/api/v1/metadata/{key}", json={"tags": ["bench"]},
                                   headers={"If-None-Match": "*"})
        assert response.status_code == 201, response.text
    return keys


def _measure(server: ServerProcess, keys: list[str], clients: int, per_client: int) -> dict[str, Any]:
    gets, patches = [], []
    conflicts = 0
    failures: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        nonlocal conflicts
        rng = random.Random(n)
        http = server.session()
        for i in range(per_client):
            url = f"{server.url}/api/v1/metadata/{rng.choice(keys)}"
            started = time.perf_counter()
            got = http.get(url)
            elapsed = (time.perf_counter() - started) * 1000
            assert got.status_code == 200, got.text
            with lock:
                gets.append(elapsed)
            if i % 2:
                continue
            version = got.headers["ETag"]
            while True:
                started = time.perf_counter()
                patched = http.patch(f"{url}/viewer-state", json={"zoom": rng.randint(1, 8)},
                                     headers={"If-Match": version})
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    patches.append(elapsed)
                if patched.status_code == 200:
                    break
                if patched.status_code == 503:  # the store failed: counted, and the edit given up
                    with lock:
                        failures.append(patched.json().get("message", ""))
                    break
                assert patched.status_code == 412, patched.text
                with lock:
                    conflicts += 1
                version = patched.headers["ETag"]

    for _ in range(20):  # warm-up: connections, caches
        server.http.get(f"{server.url}/api/v1/metadata/{keys[0]}")
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    return {"get_p50_ms": percentile(gets, 50), "get_p99_ms": percentile(gets, 99),
            "patch_p50_ms": percentile(patches, 50), "patch_p99_ms": percentile(patches, 99),
            "requests": len(gets) + len(patches), "req_per_s": (len(gets) + len(patches)) / wall,
            "conflicts_412": conflicts, "failed_503": len(failures),
            "failure": failures[0][:200] if failures else None}


def run_store(store: str, args, root: Path, moto: MotoServer | None, pg: PostgresDatabase | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"dimse.enabled": "false", "storage.fsync": "false", "log.level": "warning",
                                "server.threads": 8}
    if store == "postgresql":
        settings.update({"storage.index_backend": "postgresql", "storage.postgres_dsn": pg.new_schema()})
    if store == "dynamodb":
        settings.update(moto.dynamodb_settings())
    server = ServerProcess(root / store, env=env_of(settings))
    if store == "dynamodb":
        import subprocess

        made = subprocess.run([sys.executable, "-m", "gateway.cli", "metadata-table", "create"], env=server.env,
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
    server.start(timeout=120)
    try:
        keys = _prepare(server, args.images)
        result = _measure(server, keys, args.clients, args.requests)
    finally:
        server.stop()
    return {"store": store, "images": args.images, "clients": args.clients, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql,dynamodb")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400, help="GETs per client (half of them followed by a PATCH)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin DSN of the PostgreSQL server")
    parser.add_argument("--json", help="append one JSON line per store to this file")
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="metadata-bench-"))
    moto = MotoServer(log_dir=root).start() if "dynamodb" in stores else None
    pg = PostgresDatabase(args.pg) if "postgresql" in stores else None
    results = []
    try:
        for store in stores:
            print(f"{store} ...", file=sys.stderr, flush=True)
            results.append(run_store(store, args, root, moto, pg))
    finally:
        if moto:
            moto.stop()
        if pg:
            pg.drop()
    print("| store | GET p50 | GET p99 | PATCH p50 | PATCH p99 | req/s | 412s (retried) | 503s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['store']} | {r['get_p50_ms']:.1f} ms | {r['get_p99_ms']:.1f} ms | {r['patch_p50_ms']:.1f} ms | "
              f"{r['patch_p99_ms']:.1f} ms | {r['req_per_s']:.0f} | {r['conflicts_412']} | {r['failed_503']} |")
        if r["failure"]:
            print(f"\n{r['store']}: first 503: {r['failure']}")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as out:
            for r in results:
                out.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
