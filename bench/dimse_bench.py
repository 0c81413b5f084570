"""DIMSE benchmark: C-STORE a synthetic CBCT with dcmtk's storescu (one association, then
several in parallel) and C-GET it back with getscu, into our gateway and, side by side, Orthanc.

Not a test: nothing asserts on time. Compare ratios between targets of the same run.

    python -m bench.dimse_bench [--slices 500 --size 512 --parallel 4] [--json results.jsonl]

Orthanc (Debian ``orthanc``, see bench/orthanc.py) listens on 0.0.0.0, so it is only started
inside a private network namespace that has nothing but loopback; run the whole benchmark
there and both targets are measured the same way:

    unshare -n bash -c 'ip link set lo up; .venv/bin/python -m bench.dimse_bench --targets gateway,orthanc'

Each store phase starts its target afresh (empty storage). dcmtk tools run with
``TCP_NODELAY=1``; the gateway sets TCP_NODELAY itself, bench/orthanc.py configures Orthanc
to. Peak RSS is the target process's VmHWM (high-water mark) after the phase.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
SCU_AE = "BENCHSCU"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Result:
    target: str
    phase: str
    instances: int
    megabytes: float
    seconds: float
    peak_rss_mb: float | None = None
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.seconds else 0.0


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


# --- targets -------------------------------------------------------------------------------------

class Gateway:
    """``gateway dimse`` on a fresh data folder (SQLite index, filesystem blobs)."""

    name = "gateway"
    ae_title = "DENTALGW"

    def __init__(self, workdir: Path, fsync: bool):
        self.workdir, self.fsync = workdir, fsync
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Gateway":
        data = self.workdir / f"gateway-{self.port}"
        env = {**os.environ, "GATEWAY_STORAGE__DATA_DIR": str(data), "GATEWAY_DIMSE__PORT": str(self.port),
               "GATEWAY_DIMSE__AE_TITLE": self.ae_title, "GATEWAY_STORAGE__FSYNC": str(self.fsync).lower(),
               "GATEWAY_DIMSE__PEERS": json.dumps([{"ae_title": SCU_AE, "hosts": ["127.0.0.1"]}]),
               "GATEWAY_LOG__LEVEL": "warning"}
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "dimse", "--no-forward"], env=env,
                                     cwd=ROOT, stdout=subprocess.DEVNULL)
        _wait_port(self.port)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class OrthancTarget:
    """A throw-away Orthanc (bench/orthanc.py) that lets BENCHSCU C-GET."""

    name = "orthanc"
    ae_title = "ORTHANC_BENCH"

    def __init__(self, workdir: Path, fsync: bool):
        self.port = free_port()
        self.http_port = free_port()
        self.server = None

    def __enter__(self) -> "OrthancTarget":
        from bench import orthanc

        base = orthanc.orthanc_config

        def config(workdir, http_port, dicom_port):
            # C-GET needs the calling AE to be a declared modality that may get.
            return {**base(workdir, http_port, dicom_port), "DicomModalities": {
                "bench": {"AET": SCU_AE, "Host": "127.0.0.1", "Port": 1, "AllowGet": True}}}

        orthanc.orthanc_config = config
        try:
            self.server = orthanc.Orthanc(self.http_port, self.port)
            self.server.start()
        finally:
            orthanc.orthanc_config = base
        _wait_port(self.port)
        return self

    @property
    def pid(self) -> int:
        return self.server.pid

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()


def orthanc_available() -> str | None:
    """None when Orthanc can run here, else why not."""
    from bench import orthanc

    if not orthanc.ORTHANC_BINARY.exists():
        return f"Orthanc is not installed ({orthanc.INSTALL_HINT})"
    if not orthanc.only_loopback():
        return ("not in a private network namespace (Orthanc listens on 0.0.0.0): run the benchmark with "
                "unshare -n bash -c 'ip link set lo up; python -m bench.dimse_bench ...'")
    return None


# --- phases --------------------------------------------------------------------------------------

def _storescu(target, files: list[Path]) -> subprocess.Popen:
    return subprocess.Popen(["storescu", "-R", "-aet", SCU_AE, "-aec", target.ae_title, "127.0.0.1",
                             str(target.port), *map(str, files)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def store(target, files: list[Path], parallel: int) -> float:
    chunks = [files[i::parallel] for i in range(parallel)]
    started = time.perf_counter()
    procs = [_storescu(target, chunk) for chunk in chunks if chunk]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"storescu failed on {target.name}: {errors[0][-2000:]}")
    return seconds


def get(target, study_uid: str, out: Path) -> tuple[float, int]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = subprocess.run(["getscu", "-S", "-aet", SCU_AE, "-aec", target.ae_title, "-od", str(out),
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                          "127.0.0.1", str(target.port)], env=DCMTK_ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"getscu failed on {target.name}: {run.stderr[-2000:]}")
    return seconds, sum(1 for _ in out.iterdir())


def run_target(cls, files: list[Path], study_uid: str, args, workdir: Path) -> Iterator[Result]:
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    n = len(files)
    with cls(workdir, args.fsync) as target:
        seconds = store(target, files, 1)
        yield Result(cls.name, "C-STORE, 1 association", n, megabytes, seconds, _peak_rss_mb(target.pid))
        seconds, count = get(target, study_uid, workdir / f"get-{cls.name}")
        note = "" if count == n else f"received {count} of {n}"
        yield Result(cls.name, "C-GET, 1 association", count, megabytes * count / n, seconds,
                     _peak_rss_mb(target.pid), note)
        shutil.rmtree(workdir / f"get-{cls.name}", ignore_errors=True)
    with cls(workdir, args.fsync) as target:
        seconds = store(target, files, args.parallel)
        yield Result(cls.name, f"C-STORE, {args.parallel} associations", n, megabytes, seconds,
                     _peak_rss_mb(target.pid))


def table(results: list[Result]) -> str:
    lines = ["| target | phase | instances | MB | s | instances/s | MB/s | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        lines.append(f"| {r.target} | {r.phase}{' (' + r.note + ')' if r.note else ''} | {r.instances} | "
                     f"{r.megabytes:.1f} | {r.seconds:.2f} | {r.per_s:.1f} | {r.mb_per_s:.1f} | {rss} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=4, help="associations of the parallel store phase")
    parser.add_argument("--targets", default="gateway,orthanc", help="comma separated: gateway, orthanc")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false",
                        help="gateway: do not fsync blobs (Orthanc does not either)")
    parser.add_argument("--json", help="append one JSON line per result to this file")
    parser.add_argument("--workdir", help="keep the CBCT and the targets' storage here (default: temporary)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    for tool in ("storescu", "getscu"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y dcmtk", file=sys.stderr)
            return 2
    targets = []
    for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if name == "gateway":
            targets.append(Gateway)
        elif name == "orthanc":
            why = orthanc_available()
            if why:
                print(f"orthanc skipped: {why}", file=sys.stderr)
            else:
                targets.append(OrthancTarget)
        else:
            parser.error(f"unknown target {name!r}")

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dimse-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            from gateway.synthetic import write_cbct
        except ImportError:  # the synthetic data module is optional
            write_cbct = None
        if write_cbct is None:
            print("gateway.synthetic.write_cbct is not available", file=sys.stderr)
            return 2
        started = time.perf_counter()
        files = write_cbct(workdir / "cbct", n_slices=args.slices, size=args.size)
        import pydicom

        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        print(f"{len(files)} slices of {args.size}² ({sum(f.stat().st_size for f in files) / 1e6:.0f} MB) "
              f"written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        results: list[Result] = []
        for cls in targets:
            for result in run_target(cls, files, study_uid, args, workdir):
                print(f"{result.target}: {result.phase}: {result.per_s:.1f} instances/s, "
                      f"{result.mb_per_s:.1f} MB/s", file=sys.stderr)
                results.append(result)
        print(table(results))
        if args.json:
            with open(args.json, "a") as fh:
                for r in results:
                    fh.write(json.dumps({**asdict(r), "instances_per_s": r.per_s, "mb_per_s": r.mb_per_s,
                                         "slices": args.slices, "size": args.size, "fsync": args.fsync}) + "\n")
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
