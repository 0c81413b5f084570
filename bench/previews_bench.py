"""Previews of a whole CBCT: how long the pipeline takes against OpenJPEG's own ``opj_compress``
on the same binned slices, how many bytes the preview stream saves against WADO-RS, how soon a
viewer has a volume, and thumbnail latency.

    python -m bench.previews_bench [--slices 500 --size 512] [--json out.jsonl]

Writes a synthetic CBCT (``gateway.synthetic.write_cbct``), starts ``gateway serve`` on a free
loopback port on its embedded defaults (SQLite + folder, ``dimse.enabled = false``, the job
worker in a child process, ``previews.threads = 2``, ``previews.settle_seconds`` so long that
only the upload's completion starts the job), uploads the CBCT as a zip with the Python client
and completes the upload, then:

| phase | what |
|---|---|
| pipeline | from the upload's completion to the preview's status ``ready`` (decode, bin, encode every slice, thumbnails and 3D snapshots, store), polled every 50 ms; and the CPU time the job worker process used meanwhile (Linux ``/proc``) |
| opj 1 / opj 2 | ``opj_compress -r <ratio>`` (Debian ``libopenjp2-tools``) over the same slices binned and written as 16-bit PGM: one process over every file, and two processes over half each (both cores); and the CPU time of the two |
| bytes | the preview stream against ``GET /dicom-web/studies/{s}/series/{se}`` (``transfer-syntax=*``: the originals, which is what any PACS that keeps originals, Orthanc among them, sends) |
| volume | time to a numpy volume: ``GatewayClient.preview`` (stream + JPEG 2000 decode) against dicomweb-client's ``retrieve_series`` + ``pixel_array`` of every instance |
| thumbnail | ``GET …/thumbnail?size=256`` ``--thumbnail-reps`` (200) times on one connection: p50, p99 |

Both sides encode the same way: OpenJPEG 2.5's defaults (one tile, 6 resolution levels,
64 × 64 code blocks, LRCP, reversible 5/3 wavelet, no colour transform for grey), one quality
layer at ratio 10 of 16-bit samples, one thread per codestream (``opj_compress`` sets none
without ``-threads`` and runs without ``OPJ_NUM_THREADS``; the pipeline encodes
``previews.threads`` slices at once): the codestreams are the same byte for byte.
``opj_compress`` starts from binned PGM files, the pipeline from the stored DICOM files
(decoding, binning and the other derived objects are its own work).

Compare ratios, not absolute times (a shared, noisy machine): the CPU-time ratio is the steadier
of the two when other processes compete for the cores. Only loopback traffic; nothing
here asserts. Needs ``opj_compress`` (``apt-get install libopenjp2-tools``); without it those
rows are left out.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.transcode_bench import Gateway  # noqa: E402

MB = 1024 * 1024


def write_pgm(path: Path, samples: np.ndarray) -> None:
    rows, columns = samples.shape
    path.write_bytes(f"P5\n{columns} {rows}\n65535\n".encode() + samples.astype(">u2").tobytes())


def opj_compress(folders: list[Path], ratio: float) -> float:
    """Seconds for one ``opj_compress`` process per folder, all at once."""
    # One thread per codestream, as the pipeline's: OpenJPEG would follow OPJ_NUM_THREADS.
    env = {k: v for k, v in os.environ.items() if k != "OPJ_NUM_THREADS"}
    started = time.perf_counter()
    procs = []
    for i, folder in enumerate(folders):
        # With -ImgDir, opj_compress writes each codestream beside its image.
        procs.append(subprocess.Popen(["opj_compress", "-ImgDir", str(folder), "-OutFor", "j2k", "-r", str(ratio)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"opj_compress failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


def process_cpu(pid: int) -> float | None:
    """User + system seconds of a process, every thread (Linux ``/proc``), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(parent: int) -> int | None:
    """The job worker process ``gateway serve`` started (its child running ``gateway.cli worker``)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent \
                    and b"worker" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args) -> dict:
    from gateway.imaging.jpeg2000 import bin_pixels, to_codec_samples
    from gateway.synthetic import write_cbct
    from proprietary.client import GatewayClient

    work = Path(tempfile.mkdtemp(prefix="previews-bench-", dir=args.tmp))
    result: dict = {"slices": args.slices, "size": args.size}
    gw = None
    try:
        paths = write_cbct(work / "cbct", args.slices, args.size, patient_id="BENCH-PREVIEW")
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        study, series = first.StudyInstanceUID, first.SeriesInstanceUID
        result["originals_mb"] = sum(p.stat().st_size for p in paths) / MB
        gw = Gateway(ROOT, work / "data")
        gw.env.update({"GATEWAY_PREVIEWS__SETTLE_SECONDS": "86400", "GATEWAY_PREVIEWS__THREADS": "2",
                       "GATEWAY_PREVIEWS__POLL_INTERVAL": "0.05"})
        gw.start()
        base = f"http://127.0.0.1:{gw.port}"
        client = GatewayClient(base, gw.token)
        started = time.perf_counter()
        client.upload([str(work / "cbct")], expected=len(paths))
        result["upload_s"] = time.perf_counter() - started
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {gw.token}"
        status_url = f"{base}/api/v1/studies/{study}/series/{series}/preview/status"
        worker = worker_pid(gw.proc.pid)
        cpu_before = process_cpu(worker) if worker else None
        started = time.perf_counter()
        while True:
            status = session.get(status_url, timeout=30).json()
            if status["state"] == "ready" and not status["updating"]:
                break
            if status["state"] == "failed" or time.perf_counter() - started > 1800:
                raise RuntimeError(f"previews did not become ready: {status}")
            time.sleep(0.05)
        result["pipeline_s"] = time.perf_counter() - started
        cpu_after = process_cpu(worker) if worker else None
        if cpu_before is not None and cpu_after is not None:
            result["pipeline_cpu_s"] = cpu_after - cpu_before

        if shutil.which("opj_compress"):
            halves = [work / "pgm0", work / "pgm1"]
            for folder in halves:
                folder.mkdir()
            for i, path in enumerate(sorted(paths)):
                samples, _ = to_codec_samples(bin_pixels(pydicom.dcmread(path).pixel_array, 2))
                write_pgm(halves[i % 2] / f"{i:04d}.pgm", samples)
            whole = work / "pgm"
            whole.mkdir()
            for folder in halves:
                for file in folder.iterdir():
                    shutil.copy(file, whole / file.name)
            result["opj_1_process_s"] = opj_compress([whole], 10)
            cpu_before = children_cpu()
            result["opj_2_processes_s"] = opj_compress(halves, 10)
            result["opj_2_processes_cpu_s"] = children_cpu() - cpu_before
            result["pipeline_vs_opj_2"] = result["pipeline_s"] / result["opj_2_processes_s"]
            if "pipeline_cpu_s" in result:
                result["pipeline_vs_opj_cpu"] = result["pipeline_cpu_s"] / result["opj_2_processes_cpu_s"]

        preview_url = f"{base}/api/v1/studies/{study}/series/{series}/preview"
        started = time.perf_counter()
        with session.get(preview_url, stream=True, timeout=600) as response:
            preview_bytes = sum(len(c) for c in response.iter_content(MB))
        result["preview_stream_s"] = time.perf_counter() - started
        wado_url = f"{base}/dicom-web/studies/{study}/series/{series}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        started = time.perf_counter()
        with session.get(wado_url, headers={"Accept": accept}, stream=True, timeout=600) as response:
            wado_bytes = sum(len(c) for c in response.iter_content(MB))
        result["wado_retrieve_s"] = time.perf_counter() - started
        result["preview_mb"], result["wado_mb"] = preview_bytes / MB, wado_bytes / MB
        result["bytes_saved_x"] = wado_bytes / preview_bytes

        started = time.perf_counter()
        volume = client.preview(study, series)
        result["client_volume_s"] = time.perf_counter() - started
        result["volume_shape"] = list(volume.stored.shape)

        from dicomweb_client import DICOMwebClient

        dw = DICOMwebClient(url=f"{base}/dicom-web", headers={"Authorization": f"Bearer {gw.token}"})
        started = time.perf_counter()
        datasets = dw.retrieve_series(study, series)
        stack = np.stack([ds.pixel_array for ds in datasets])
        result["wado_volume_s"] = time.perf_counter() - started
        result["volume_speedup_x"] = result["wado_volume_s"] / result["client_volume_s"]
        del stack, datasets

        thumb = f"{base}/api/v1/studies/{study}/series/{series}/thumbnail"
        times = []
        for _ in range(args.thumbnail_reps):
            started = time.perf_counter()
            response = session.get(thumb, params={"size": 256}, timeout=30)
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        result["thumbnail_p50_ms"] = statistics.median(times)
        result["thumbnail_p99_ms"] = times[min(len(times) - 1, int(len(times) * 0.99))]
        return result
    finally:
        if gw is not None:
            gw.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(result: dict) -> str:
    rows = [("originals", f"{result['originals_mb']:.0f} MB, {result['slices']} × {result['size']}²"),
            ("zip upload (client)", f"{result['upload_s']:.1f} s"),
            ("pipeline: upload complete → ready", f"{result['pipeline_s']:.1f} s")]
    if "opj_1_process_s" in result:
        rows += [("opj_compress -r 10, 1 process", f"{result['opj_1_process_s']:.1f} s"),
                 ("opj_compress -r 10, 2 processes", f"{result['opj_2_processes_s']:.1f} s"),
                 ("pipeline ÷ opj (2 processes)", f"{result['pipeline_vs_opj_2']:.2f}×  (goal ≤ 1.3×)")]
    if "pipeline_vs_opj_cpu" in result:
        rows += [("CPU: pipeline's worker / opj (2 processes)",
                  f"{result['pipeline_cpu_s']:.1f} s / {result['opj_2_processes_cpu_s']:.1f} s: "
                  f"{result['pipeline_vs_opj_cpu']:.2f}×")]
    rows += [("preview stream", f"{result['preview_mb']:.1f} MB in {result['preview_stream_s']:.2f} s"),
             ("WADO-RS series (originals)", f"{result['wado_mb']:.1f} MB in {result['wado_retrieve_s']:.2f} s"),
             ("bytes: WADO-RS ÷ preview", f"{result['bytes_saved_x']:.1f}×  (goal ≥ 10×)"),
             ("volume in Python: preview + decode", f"{result['client_volume_s']:.2f} s"),
             ("volume in Python: WADO-RS + pixel_array", f"{result['wado_volume_s']:.2f} s"),
             ("volume speed-up", f"{result['volume_speedup_x']:.1f}×"),
             ("thumbnail 256 p50 / p99", f"{result['thumbnail_p50_ms']:.1f} / {result['thumbnail_p99_ms']:.1f} ms")]
    return "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--thumbnail-reps", type=int, default=200)
    parser.add_argument("--tmp", default=None, help="folder for the CBCT and the server's data")
    parser.add_argument("--json", help="append the result to this file as one JSON line")
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
