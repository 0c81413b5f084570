"""Peak memory of the gateway while it transcodes a large JPEG 2000 instance for WADO-RS.

    python -m bench.transcode_bench [--size-mb 1024] [--distinct 8] [--rows 512]
        [--modes stored,single,multipart] [--code DIR] [--label NAME] [--json out.jsonl]
    python -m bench.transcode_bench --compare out.jsonl

Generates one multi-frame JPEG 2000 lossless instance of about ``--size-mb`` MB (``--distinct``
16-bit frames encoded with pylibjpeg-openjpeg, repeated; written to disk item by item, so the
generator holds one frame), starts ``gateway serve`` on a free loopback port on its embedded
defaults (2 workers x 8 threads; only the data folder, the port and ``dimse.enabled = false``
are set, as the test launcher does), stores the file with ``gateway import``, then retrieves it:

* ``stored``: ``transfer-syntax=*`` on the instance, the baseline (the stored bytes, no decoding);
* ``single``: ``Accept: application/dicom`` on the instance (default transfer syntax: Explicit
  VR Little Endian, so the server decodes every frame);
* ``multipart``: ``Accept: multipart/related; type="application/dicom"`` on the series (same).

Each response is read as a stream (1 MiB chunks, nothing kept). During each retrieve the RSS
of the gunicorn master and all its children is sampled every 50 ms; reported are the idle RSS
before the request, the peak during it, the bytes received and the time. ``--code DIR`` runs
the server (and ``gateway import``) from another checkout of the project, for example the
commit before the transcoding service, to show the before/after figures::

    git archive <base commit> | tar -x -C /tmp/base
    python -m bench.transcode_bench --code /tmp/base --label before --json t.jsonl
    python -m bench.transcode_bench --label after --json t.jsonl
    python -m bench.transcode_bench --compare t.jsonl

Only loopback traffic; not a test (nothing asserts on time or memory).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import JPEG2000Lossless, generate_uid

from bench.dicomweb_bench import RssSampler

MB = 1_000_000
ROOT = Path(__file__).resolve().parent.parent
ACCEPT = {
    "single": "application/dicom",
    "multipart": 'multipart/related; type="application/dicom"',
    "stored": 'multipart/related; type="application/dicom"; transfer-syntax=*',
}


# --- the instance --------------------------------------------------------------------------------

def encode_frames(distinct: int, rows: int, seed: int = 7) -> list[bytes]:
    """``distinct`` 16-bit (12 bits stored) CBCT-like slices: a smooth disc and noise, which
    lossless JPEG 2000 packs to about 70 % of their size (so 1 GB stays below the 4 GiB a
    native Pixel Data element can hold once decoded)."""
    import openjpeg

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:rows]
    r = np.hypot(x - rows / 2, y - rows / 2) / (rows / 2)
    frames = []
    for i in range(distinct):
        body = np.where(r < 0.9, 1200 + 400 * np.cos(r * (3 + i)), 50)
        arr = (body + rng.integers(0, 2048, (rows, rows))).clip(0, 4095).astype(np.uint16)
        frames.append(openjpeg.encode(arr, bits_stored=12, photometric_interpretation=0, use_mct=False))
    return frames


def write_instance(path: Path, target_bytes: int, distinct: int, rows: int) -> dict[str, Any]:
    """A Part 10 JPEG 2000 lossless multi-frame file, written item by item."""
    codestreams = encode_frames(distinct, rows)
    sizes = [len(c) + len(c) % 2 for c in codestreams]
    count = max(1, target_bytes // (sum(sizes) // len(sizes) + 8))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH-TRANSCODE", "Bench^Transcode", "CT"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 1, 1
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = count
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.LossyImageCompression = "00"
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    offsets, position = [], 0
    for i in range(count):
        offsets.append(position)
        position += 8 + sizes[i % distinct]
    with path.open("wb") as out:
        out.write(head.getvalue())
        out.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        out.write(struct.pack("<HHL", 0xFFFE, 0xE000, 4 * count) + struct.pack(f"<{count}L", *offsets))
        for i in range(count):
            data = codestreams[i % distinct]
            if len(data) % 2:
                data += b"\0"
            out.write(struct.pack("<HHL", 0xFFFE, 0xE000, len(data)))
            out.write(data)
        out.write(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    return {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "sop": ds.SOPInstanceUID,
            "frames": count, "rows": rows, "stored_bytes": path.stat().st_size,
            "native_pixel_bytes": count * rows * rows * 2}


# --- the server ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``gateway serve`` from the checkout ``code`` on a loopback port, its own data folder."""

    def __init__(self, code: Path, data: Path):
        self.code, self.data = code, data
        self.port = free_port()
        self.env = {**os.environ, "GATEWAY_STORAGE__DATA_DIR": str(data), "GATEWAY_SERVER__PORT": str(self.port),
                    "GATEWAY_SERVER__HOST": "127.0.0.1", "GATEWAY_DIMSE__ENABLED": "false",
                    "GATEWAY_LOG__LEVEL": "warning", "GATEWAY_STORAGE__FSYNC": "false"}
        self.proc: subprocess.Popen | None = None
        self.log = data.parent / f"server-{self.port}.log"

    def cli(self, *args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=self.code, env=self.env,
                             capture_output=True, text=True, timeout=3600)
        if run.returncode != 0:
            raise RuntimeError(f"gateway {' '.join(args)}: {run.stderr[-2000:]}")
        return run.stdout

    def start(self) -> "Gateway":
        self.data.mkdir(parents=True, exist_ok=True)
        self.token = self.cli("token", "--clinic", "default", "--user", "bench", "--role", "admin",
                              "--ttl", "4h").strip().splitlines()[-1]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=self.code, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


# --- one retrieve --------------------------------------------------------------------------------

def retrieve(gw: Gateway, instance: dict[str, Any], mode: str) -> dict[str, Any]:
    base = f"http://127.0.0.1:{gw.port}/dicom-web/studies/{instance['study']}/series/{instance['series']}"
    url = base if mode == "multipart" else f"{base}/instances/{instance['sop']}"
    sampler = RssSampler(gw.proc.pid, interval=0.05)
    idle = sampler.rss()
    sampler.start()
    started = time.perf_counter()
    received, prefix, status, length = 0, b"", None, None
    try:
        with requests.get(url, headers={"Authorization": f"Bearer {gw.token}", "Accept": ACCEPT[mode]},
                          stream=True, timeout=(10, 3600)) as response:
            status = response.status_code
            length = response.headers.get("Content-Length")
            for chunk in response.iter_content(1 << 20):
                received += len(chunk)
                if len(prefix) < 1 << 16:
                    prefix += chunk[: (1 << 16) - len(prefix)]
    finally:
        seconds = time.perf_counter() - started
        sampler.stop()
    syntax = None
    at = prefix.find(b"DICM")
    if at >= 128:  # the first part's file meta says what was sent
        head = pydicom.dcmread(io.BytesIO(prefix[at - 128:]), stop_before_pixels=True)
        syntax = str(head.file_meta.get("TransferSyntaxUID"))
    return {"mode": mode, "accept": ACCEPT[mode], "status": status, "received_bytes": received,
            "content_length": int(length) if length else None, "transfer_syntax": syntax,
            "seconds": round(seconds, 2), "mb_per_s": round(received / MB / seconds, 1) if seconds else None,
            "idle_rss_mb": round(idle / MB, 1), "peak_rss_mb": round(sampler.peak() / MB, 1),
            "peak_over_idle_mb": round((sampler.peak() - idle) / MB, 1)}


def run(args) -> list[dict[str, Any]]:
    code = Path(args.code).resolve()
    work = Path(tempfile.mkdtemp(prefix="transcode-bench-", dir=args.tmp))
    results = []
    gw = None
    try:
        path = work / "cbct-j2k.dcm"
        started = time.perf_counter()
        instance = write_instance(path, int(args.size_mb * MB), args.distinct, args.rows)
        print(f"generated {instance['stored_bytes'] / MB:.0f} MB, {instance['frames']} frames of "
              f"{args.rows}x{args.rows} ({instance['native_pixel_bytes'] / MB:.0f} MB decoded) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        gw = Gateway(code, work / "data").start()
        started = time.perf_counter()
        print(gw.cli("import", "--quiet", str(path)).strip(), f"({time.perf_counter() - started:.0f} s)", flush=True)
        path.unlink()  # the server reads its own stored copy
        for mode in args.modes.split(","):
            result = retrieve(gw, instance, mode)
            result.update(label=args.label, code=str(code), stored_bytes=instance["stored_bytes"],
                          frames=instance["frames"], native_pixel_bytes=instance["native_pixel_bytes"],
                          machine=f"{platform.node()} {os.cpu_count()} cpu", at=time.strftime("%Y-%m-%d %H:%M"))
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        if gw is not None:
            gw.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "a") as out:
            for result in results:
                out.write(json.dumps(result) + "\n")
    return results


def compare(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    stored = {r["label"]: r for r in rows if r["mode"] == "stored"}
    print("| label | mode | instance | received | time | peak RSS | peak - idle | peak ÷ stored-retrieve peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = stored.get(r["label"])
        ratio = f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}×" if base else "–"
        print(f"| {r['label']} | {r['mode']} ({r['transfer_syntax'] or r['status']}) | "
              f"{r['stored_bytes'] / MB:.0f} MB, {r['frames']} frames | {r['received_bytes'] / MB:.0f} MB | "
              f"{r['seconds']:.0f} s | {r['peak_rss_mb']:.0f} MB | {r['peak_over_idle_mb']:.0f} MB | {ratio} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=1024, help="stored size of the instance, MB")
    p.add_argument("--distinct", type=int, default=8, help="distinct frames encoded (then repeated)")
    p.add_argument("--rows", type=int, default=512, help="rows and columns of each frame")
    p.add_argument("--modes", default="stored,single,multipart",
                   help="retrieves to run, in order (the baseline first: a worker keeps the heap that a "
                        "whole-instance decode grew, which would inflate what follows)")
    p.add_argument("--code", default=str(ROOT), help="checkout the server runs from (default: this one)")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--json", help="append the results to this JSON-lines file")
    p.add_argument("--tmp", default=None, help="folder for the instance and the server's data (default: TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the data folder")
    p.add_argument("--compare", metavar="JSONL", help="print a table of earlier results and exit")
    args = p.parse_args(argv)
    if args.compare:
        compare(args.compare)
        return
    run(args)


if __name__ == "__main__":
    main()
