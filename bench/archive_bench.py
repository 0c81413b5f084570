"""Zip downloads of a whole CBCT against our WADO-RS retrieve and the loopback floor, with the
server's peak memory during each.

    python -m bench.archive_bench [--slices 500 --size 512] [--reps 3] [--json out.jsonl]
    python -m bench.archive_bench --slices 1000 --size 1024     # a 2 GB study: memory stays flat
    python -m bench.archive_bench --compare out.jsonl

Writes a synthetic CBCT (``gateway.synthetic.write_cbct``; 500 x 512² 16-bit slices ≈ 263 MB
by default), starts ``gateway serve`` on a free loopback port on its embedded defaults (2
gthread workers x 8 threads, SQLite + folder, ``dimse.enabled = false``, ``storage.fsync =
false``), stores it with ``gateway import``, then downloads, each response read as a stream in
1 MiB chunks and dropped, ``--reps`` times (the median run is reported):

| phase | request |
|---|---|
| floor | the slices' files end to end, from ``bench.compare``'s minimal loopback HTTP server (sendfile) |
| wado | ``GET /dicom-web/studies/{s}/series/{se}``, ``transfer-syntax=*`` (multipart/related) |
| archive | ``GET /api/v1/studies/{s}/archive`` (stored entries; the length checked against Content-Length) |
| ranges | the same archive as 4 ranges fetched in parallel (one request each), reassembled length checked |
| slices | ``GET …/series/{se}/archive?slices=a-b``, ``--slice-count`` (50) slices from the middle |
| deflate | ``GET /api/v1/studies/{s}/archive?compress=deflate`` (once: CPU-bound) |

During each phase the RSS of the gunicorn master and all its children is sampled every 50 ms
(psutil): the idle figure just before it and the peak during it. With ``--verify`` the first
archive is also saved and read back with ``zipfile`` (every CRC checked). Only loopback
traffic; not a test (nothing asserts on time or memory).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402
from bench.compare import wait_port  # noqa: E402
from bench.dicomweb_bench import RssSampler, boundary_of, count_delimiters  # noqa: E402
from bench.transcode_bench import Gateway  # noqa: E402

MB = 1_000_000
CHUNK = 1 << 20
ACCEPT_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
TIMEOUT = (10, 3600)


def drain(response: requests.Response, sink=None) -> int:
    total = 0
    for chunk in response.iter_content(CHUNK):
        total += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return total


class Phase:
    """Runs a download ``reps`` times while the server's memory is sampled."""

    def __init__(self, pid: int | None):
        self.pid = pid

    def run(self, name: str, func: Callable[[], int], reps: int) -> dict[str, Any]:
        sampler = RssSampler(self.pid, interval=0.05) if self.pid else None
        idle = sampler.rss() if sampler else 0
        if sampler:
            sampler.start()
        times, received = [], 0
        try:
            for _ in range(reps):
                started = time.perf_counter()
                received = func()
                times.append(time.perf_counter() - started)
        finally:
            if sampler:
                sampler.stop()
        seconds = statistics.median(times)
        result = {"phase": name, "bytes": received, "seconds": round(seconds, 3),
                  "mb_per_s": round(received / MB / seconds, 1), "reps": reps}
        if sampler:
            result.update(idle_rss_mb=round(idle / MB, 1), peak_rss_mb=round(sampler.peak() / MB, 1),
                          peak_over_idle_mb=round((sampler.peak() - idle) / MB, 1))
        print(f"  {name}: {received / MB:.1f} MB in {seconds:.2f} s = {result['mb_per_s']} MB/s"
              + (f", peak RSS {result['peak_rss_mb']} MB (idle {result['idle_rss_mb']})" if sampler else ""),
              flush=True)
        return result


def floor(paths: list[Path], work: Path, reps: int) -> dict[str, Any]:
    blob = work / "floor.bin"
    with open(blob, "wb") as out:
        for path in paths:
            with open(path, "rb") as fh:
                shutil.copyfileobj(fh, out, CHUNK)
    os.sync()  # no writeback of the copy during the measurement
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.compare", "--floor-server", str(port), str(blob)],
                              cwd=ROOT)
    try:
        wait_port(port)
        session = requests.Session()

        def get() -> int:
            with session.get(f"http://127.0.0.1:{port}/download", stream=True, timeout=TIMEOUT) as response:
                return drain(response)

        return Phase(None).run("floor", get, reps)
    finally:
        server.terminate()
        server.wait(10)
        blob.unlink(missing_ok=True)


def run(args) -> list[dict[str, Any]]:
    from pydicom.uid import generate_uid

    from gateway.synthetic import write_cbct

    work = Path(tempfile.mkdtemp(prefix="archive-bench-", dir=args.tmp))
    results: list[dict[str, Any]] = []
    gw = None
    try:
        study, series = generate_uid(), generate_uid()
        started = time.perf_counter()
        paths = write_cbct(work / "cbct", args.slices, args.size, study_uid=study, series_uid=series,
                           patient_id="BENCH-ZIP")
        total = sum(p.stat().st_size for p in paths)
        print(f"generated {len(paths)} slices of {args.size}², {total / MB:.0f} MB, in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        results.append(floor(paths, work, args.reps))
        gw = Gateway(ROOT, work / "data").start()
        started = time.perf_counter()
        print(gw.cli("import", "--quiet", str(work / "cbct")).strip(), f"({time.perf_counter() - started:.0f} s)",
              flush=True)
        shutil.rmtree(work / "cbct")  # the server reads its own stored copies
        os.sync()
        base = f"http://127.0.0.1:{gw.port}"
        archive = f"{base}/api/v1/studies/{study}/archive"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {gw.token}"
        phase = Phase(gw.proc.pid)

        def wado() -> int:
            with session.get(f"{base}/dicom-web/studies/{study}/series/{series}", headers={"Accept": ACCEPT_ANY},
                             stream=True, timeout=TIMEOUT) as response:
                response.raise_for_status()
                received, parts = count_delimiters(response.iter_content(CHUNK),
                                                   boundary_of(response.headers["Content-Type"]))
            if parts != len(paths):
                raise RuntimeError(f"WADO-RS gave {parts} parts, expected {len(paths)}")
            return received

        def whole(url: str = archive, params=None, sink=None) -> int:
            with session.get(url, params=params, stream=True, timeout=TIMEOUT) as response:
                response.raise_for_status()
                received = drain(response, sink)
                length = response.headers.get("Content-Length")
            if length is not None and int(length) != received:
                raise RuntimeError(f"archive: {received} bytes, Content-Length {length}")
            return received

        length = int(session.head(archive, timeout=60).headers["Content-Length"])

        def ranges() -> int:
            bounds = [length * k // 4 for k in range(5)]

            def part(k: int) -> int:
                with requests.Session() as s:
                    s.headers.update(session.headers)
                    with s.get(archive, headers={"Range": f"bytes={bounds[k]}-{bounds[k + 1] - 1}"}, stream=True,
                               timeout=TIMEOUT) as response:
                        if response.status_code != 206:
                            raise RuntimeError(f"range {k}: HTTP {response.status_code}")
                        return drain(response)

            with ThreadPoolExecutor(4) as pool:
                received = sum(pool.map(part, range(4)))
            if received != length:
                raise RuntimeError(f"ranges gave {received} bytes of {length}")
            return received

        first = max(1, (args.slices - args.slice_count) // 2 + 1)
        last = min(args.slices, first + args.slice_count - 1)
        series_archive = f"{base}/api/v1/studies/{study}/series/{series}/archive"

        if args.verify:
            saved = work / "check.zip"
            with open(saved, "wb") as out:
                whole(sink=out)
            with zipfile.ZipFile(saved) as zf:
                bad = zf.testzip()
                count = len(zf.infolist())
            saved.unlink()
            print(f"  verified: {count} entries, testzip {'ok' if bad is None else 'FAILED at ' + bad}", flush=True)
        results.append(phase.run("wado", wado, args.reps))
        results.append(phase.run("archive", whole, args.reps))
        results.append(phase.run("ranges", ranges, args.reps))
        results.append(phase.run("slices", lambda: whole(series_archive, {"slices": f"{first}-{last}"}), args.reps))
        if not args.no_deflate:
            results.append(phase.run("deflate", lambda: whole(params={"compress": "deflate"}), 1))
    finally:
        if gw is not None:
            gw.stop()
        shutil.rmtree(work, ignore_errors=True)
    meta = {"slices": args.slices, "size": args.size, "study_mb": round(total / MB, 1), "slice_count": args.slice_count,
            "label": args.label, "machine": f"{platform.node()} {os.cpu_count()} cpu",
            "at": time.strftime("%Y-%m-%d %H:%M")}
    for result in results:
        result.update(meta)
    if args.json:
        with open(args.json, "a") as out:
            for result in results:
                out.write(json.dumps(result) + "\n")
    return results


def table(results: list[dict[str, Any]]) -> str:
    by = {r["phase"]: r for r in results}
    wado, floor_, archive = by.get("wado"), by.get("floor"), by.get("archive")

    def ratio(a, b):
        return f"{a / b:.2f}×" if a and b else "–"

    lines = ["| phase | bytes | time | MB/s | ÷ WADO-RS | ÷ floor | peak RSS | peak − idle |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['phase']} | {r['bytes'] / MB:,.1f} MB | {r['seconds']:.2f} s | {r['mb_per_s']:,.0f} | "
                     f"{ratio(r['mb_per_s'], wado and wado['mb_per_s'])} | "
                     f"{ratio(r['mb_per_s'], floor_ and floor_['mb_per_s'])} | "
                     f"{r.get('peak_rss_mb', '–')} MB | {r.get('peak_over_idle_mb', '–')} MB |")
    if archive and "deflate" in by:
        d = by["deflate"]
        lines.append("")
        lines.append(f"deflate: {d['bytes'] / archive['bytes']:.3f} of the stored archive's bytes, "
                     f"{archive['bytes'] / MB / d['seconds']:,.0f} MB/s of stored bytes.")
    if archive and "slices" in by:
        s = by["slices"]
        lines.append("")
        lines.append(f"{s['slice_count']} slices of {s['slices']}: {s['bytes'] / archive['bytes']:.3f} of the bytes, "
                     f"{s['seconds'] / archive['seconds']:.3f} of the time of the whole archive.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=500)
    p.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    p.add_argument("--slice-count", type=int, default=50, help="slices in the ?slices= download")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--verify", action="store_true", help="also save one archive and check it with zipfile")
    p.add_argument("--no-deflate", action="store_true")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--json", help="append the results to this JSON-lines file")
    p.add_argument("--tmp", default=None, help="folder for the data (default: TMPDIR)")
    p.add_argument("--compare", metavar="JSONL", help="print the table of earlier results and exit")
    args = p.parse_args(argv)
    if args.compare:
        rows = [json.loads(line) for line in Path(args.compare).read_text().splitlines() if line.strip()]
        runs: dict[tuple, list] = {}
        for row in rows:
            runs.setdefault((row["label"], row["at"], row["study_mb"]), []).append(row)
        for (label, at, mb), group in runs.items():
            print(f"\n{label}, {at}, {mb} MB study\n\n{table(group)}")
        return 0
    print(table(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
