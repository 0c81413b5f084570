"""AI masks uploaded through the signed-URL flow, end to end, as an AI service does it.

    python -m bench.mask_bench [--slices 100] [--size 512] [--labels 1] [--parallel 16] [--reps 3]
        [--stacks filesystem,s3] [--json out.jsonl]
    python -m bench.mask_bench --compare out.jsonl

For each stack it starts ``gateway serve`` on a free loopback port (embedded defaults: SQLite, 2
workers x 8 threads; ``--stacks s3`` puts the blobs on a ``moto_server`` of its own), stores a
series of ``--slices`` instances of ``--size``² pixels (a mask is as large as its slice) by
STOW-RS (not timed), makes an annotation of it, then per repetition: a mask group, ``POST …/signed-url`` for every slice x label, the PUT of every PNG
(``--size``² 8-bit, one disc per label, made beforehand) from ``--parallel`` threads each with
its own ``requests.Session``, and ``POST …/complete``. Reported: the time of each phase and the
whole flow (median of the repetitions), and masks/s. With the filesystem store the PUTs go to
the gateway's own signed upload URL; with S3 straight to moto_server (in memory, on loopback:
S3's network costs are not in it).

Not a test: nothing here asserts on time. Needs ``requests``, ``pydicom``, ``numpy`` and, for
s3, ``moto[server]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProcess  # noqa: E402
from tests.e2e.annotation_support import store_series  # noqa: E402
from tests.services import MotoServer, env_of  # noqa: E402


def mask_png(size: int, seed: int) -> bytes:
    """A ``size``² 8-bit grayscale PNG of one label: a disc of a seed-dependent radius."""
    y, x = np.mgrid[0:size, 0:size]
    radius = size * (0.2 + 0.1 * ((seed * 7919) % 10) / 10)
    image = np.where((x - size / 2) ** 2 + (y - size / 2) ** 2 <= radius ** 2, 255, 0).astype(np.uint8)
    raw = np.hstack([np.zeros((size, 1), np.uint8), image]).tobytes()  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


class Client:
    """One requests.Session per thread (a connection pool each), as an upload tool would."""

    def __init__(self, token: str):
        self.token = token
        self.local = threading.local()

    @property
    def http(self) -> requests.Session:
        if not hasattr(self.local, "http"):
            self.local.http = requests.Session()
        return self.local.http

    def api(self, method: str, url: str, **kw) -> requests.Response:
        response = self.http.request(method, url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120,
                                     **kw)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:300]}")
        return response


def one_run(client: Client, base: str, annotation: str, masks: list[tuple[int, str, bytes]],
            parallel: int) -> dict[str, float]:
    started = time.perf_counter()
    group = client.api("POST", f"{base}/api/v1/annotations/{annotation}/mask-groups", json={"name": "bench"}).json()
    url = group["urls"]["self"]
    t0 = time.perf_counter()
    signed = client.api("POST", f"{url}/signed-url", json={"masks": [
        {"slice": s, "label": label, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for s, label, data in masks]}).json()["uploads"]
    t1 = time.perf_counter()

    def put(pair) -> None:
        upload, (_, _, data) = pair
        headers = {k: v for k, v in upload["headers"].items() if k.lower() != "content-length"}
        response = client.http.put(upload["url"], data=data, headers=headers, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"PUT {upload['key']}: {response.status_code} {response.text[:300]}")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(put, zip(signed, masks)))
    t2 = time.perf_counter()
    done = client.api("POST", f"{url}/complete").json()
    t3 = time.perf_counter()
    if done["recorded"] != len(masks):
        raise RuntimeError(f"complete recorded {done['recorded']} of {len(masks)}")
    return {"group_ms": (t0 - started) * 1000, "signed_url_ms": (t1 - t0) * 1000, "put_s": t2 - t1,
            "complete_ms": (t3 - t2) * 1000, "total_s": t3 - started}


def run_stack(stack: str, args, root: Path) -> dict[str, Any]:
    with ExitStack() as cleanup:
        env = {"GATEWAY_STORAGE__FSYNC": "false"}
        if stack == "s3":
            moto = MotoServer(log_dir=root).start()
            cleanup.callback(moto.stop)
            env.update(env_of(moto.settings(moto.create_bucket())))
        server = ServerProcess(root / f"{stack}-data", env=env).start()
        cleanup.callback(server.stop)
        headers = server.auth_headers
        study, series, _ = store_series(server.url, headers, args.slices, size=args.size)
        client = Client(server.token)
        annotation = client.api("POST", f"{server.url}/api/v1/annotations", json={
            "study": study, "series": series, "type": "segmentation"}).json()["id"]
        labels = [f"label{n}" for n in range(args.labels)]
        masks = [(s, label, mask_png(args.size, s * 31 + n)) for s in range(args.slices)
                 for n, label in enumerate(labels)]
        runs = [one_run(client, server.url, annotation, masks, args.parallel) for _ in range(args.reps)]
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {"stack": stack, "masks": len(masks), "mask_bytes": sum(len(m[2]) for m in masks) // len(masks),
            "size": args.size, "parallel": args.parallel, "reps": args.reps, **median,
            "masks_per_s": len(masks) / median["total_s"], "runs": runs, "python": platform.python_version()}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| stack | masks | PNG bytes | mask group | signed-url | PUTs | complete | total | masks/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['stack']} | {r['masks']} | {r['mask_bytes']:,} | {r['group_ms']:.0f} ms | "
                     f"{r['signed_url_ms']:.0f} ms | {r['put_s']:.2f} s | {r['complete_ms']:.0f} ms | "
                     f"{r['total_s']:.2f} s | {r['masks_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="mask edge in pixels")
    parser.add_argument("--labels", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--stacks", default="filesystem,s3")
    parser.add_argument("--json", help="append each stack's result as a JSON line")
    parser.add_argument("--compare", help="print the table of a --json file and exit")
    args = parser.parse_args(argv)
    if args.compare:
        print(table([json.loads(line) for line in Path(args.compare).read_text().splitlines() if line.strip()]))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="mask-bench-") as tmp:
        for stack in [s.strip() for s in args.stacks.split(",") if s.strip()]:
            results.append(run_stack(stack, args, Path(tmp)))
            if args.json:
                with open(args.json, "a") as out:
                    out.write(json.dumps(results[-1]) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
