"""Start and stop a throw-away Orthanc 1.10 (Debian packages) as a benchmark peer.

Orthanc 1.10 has no bind-address setting and listens on 0.0.0.0, so the helper refuses
to start it unless the process runs in a network namespace that has only loopback
(`unshare -n bash -c 'ip link set lo up; ...'`); pass --allow-host-network to override.

    python -m bench.orthanc [--http-port 8043] -- python -m bench.dicomweb_bench \\
        --url {url} --pid {pid} --label orthanc

starts Orthanc, runs the command after `--` with `{pid}`, `{url}` (the DICOMweb
root), `{dicom_port}` and `{aet}` replaced, then stops Orthanc.  Without a command it
serves until interrupted.  `--modality AET@HOST:PORT` declares a DICOM peer (C-MOVE
destination, allowed calling AE); `--restrict-aets` makes Orthanc refuse associations from
any other AE title (as a gateway with `dimse.peers` does).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "apt-get update && apt-get install -y orthanc orthanc-dicomweb"


class OrthancUnavailable(RuntimeError):
    pass


def only_loopback() -> bool:
    """True when this process's network namespace has no interface but `lo`."""
    # if_nameindex asks the kernel about the current namespace; /sys/class/net would
    # show the namespace sysfs was mounted in.
    try:
        return {name for _, name in socket.if_nameindex()} <= {"lo"}
    except OSError:
        return False


def ensure_loopback_up() -> None:
    """Bring `lo` up in a fresh network namespace (what `ip link set lo up` does, without
    needing iproute2): SIOCGIFFLAGS/SIOCSIFFLAGS with IFF_UP. Needs CAP_NET_ADMIN there."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh14s", b"lo", 0, b"")
        flags = struct.unpack("16sh14s", fcntl.ioctl(sock, siocgifflags, request))[1]
        if not flags & iff_up:
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sh14s", b"lo", flags | iff_up, b""))


def orthanc_config(workdir: Path, http_port: int, dicom_port: int) -> dict[str, object]:
    return {
        "Name": "orthanc-bench",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC_BENCH",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        # Leave DicomWeb.Host out: with a host and no port, BulkDataURIs lose the port.
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def modalities_config(modalities: list[tuple[str, str, int]]) -> dict[str, object]:
    """``DicomModalities`` for peers that may do everything (echo, store, find, move, get)."""
    return {f"peer{i}": {"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowFind": True,
                         "AllowMove": True, "AllowGet": True, "AllowStore": True}
            for i, (aet, host, port) in enumerate(modalities, 1)}


RESTRICT_AETS = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
                 "DicomAlwaysAllowMove": False, "DicomAlwaysAllowGet": False}


class Orthanc:
    """A temporary Orthanc: config, storage and index live in one temp folder.

    ``extra_config`` is merged over :func:`orthanc_config` (e.g. ``DicomModalities``).
    """

    def __init__(
        self,
        http_port: int = 8043,
        dicom_port: int = 4243,
        workdir: str | Path | None = None,
        *,
        allow_host_network: bool = False,
        keep_workdir: bool = False,
        extra_config: dict[str, object] | None = None,
    ) -> None:
        self.extra_config = dict(extra_config or {})
        self.http_port = http_port
        self.dicom_port = dicom_port
        self._given_workdir = Path(workdir) if workdir else None
        self.workdir: Path | None = None
        self.allow_host_network = allow_host_network
        self.keep_workdir = keep_workdir
        self.process: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("Orthanc is not running")
        return self.process.pid

    def start(self, timeout: float = 30.0) -> None:
        if not ORTHANC_BINARY.exists() or not DICOMWEB_PLUGIN.exists():
            raise OrthancUnavailable(
                f"Orthanc or its DICOMweb plugin is missing ({ORTHANC_BINARY}, {DICOMWEB_PLUGIN}); "
                f"install them with: {INSTALL_HINT}"
            )
        if only_loopback():
            ensure_loopback_up()
        elif not self.allow_host_network:
            raise RuntimeError(
                "Orthanc 1.10 listens on 0.0.0.0: run it in a private network namespace, e.g. "
                "unshare -n bash -c 'ip link set lo up; python -m bench.orthanc ...' "
                "(or pass allow_host_network=True / --allow-host-network)"
            )
        if self._given_workdir:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-bench-"))
        for sub in ("storage", "index"):
            (self.workdir / sub).mkdir(exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config = {**orthanc_config(self.workdir, self.http_port, self.dicom_port), **self.extra_config}
        config_path.write_text(json.dumps(config, indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        self._log = open(self.workdir / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [str(ORTHANC_BINARY), str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        logger.info("Orthanc pid %d, config %s", self.process.pid, config_path)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s")

    @property
    def ae_title(self) -> str:
        return str(self.extra_config.get("DicomAet", "ORTHANC_BENCH"))

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "orthanc.log" if self.workdir else None

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Orthanc did not stop within %.0f s; killing pid %d", timeout, self.process.pid)
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None and not self.keep_workdir and self._given_workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http-port", type=int, default=8043)
    parser.add_argument("--dicom-port", type=int, default=4243)
    parser.add_argument("--workdir", help="keep config, storage and log here (default: a temp folder, removed)")
    parser.add_argument("--allow-host-network", action="store_true", help="start even outside a private netns")
    parser.add_argument("--aet", default="ORTHANC_BENCH", help="Orthanc's AE title")
    parser.add_argument("--modality", action="append", default=[], metavar="AET@HOST:PORT",
                        help="a DICOM peer Orthanc knows (repeatable): C-MOVE destination, allowed calling AE")
    parser.add_argument("--restrict-aets", action="store_true",
                        help="refuse associations from AE titles that are not a --modality")
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:  # everything after "--" is the command to run while Orthanc is up
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if not ORTHANC_BINARY.exists():
        print(f"Orthanc is not installed ({ORTHANC_BINARY} missing). Install it with:\n  {INSTALL_HINT}", file=sys.stderr)
        return 2
    modalities = []
    for text in args.modality:
        aet, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
        if not aet or not host or not port.isdigit():
            parser.error(f"--modality {text!r}: expected AET@HOST:PORT")
        modalities.append((aet, host, int(port)))
    extra: dict[str, object] = {"DicomAet": args.aet}
    if modalities:
        extra["DicomModalities"] = modalities_config(modalities)
    if args.restrict_aets:
        extra.update(RESTRICT_AETS)
    server = Orthanc(
        args.http_port, args.dicom_port, args.workdir, allow_host_network=args.allow_host_network,
        extra_config=extra,
    )
    try:
        server.start()
    except (OrthancUnavailable, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        print(f"Orthanc {server.dicomweb_url} pid {server.pid}", flush=True)
        if command:
            command = [c.replace("{pid}", str(server.pid)).replace("{url}", server.dicomweb_url)
                       .replace("{dicom_port}", str(server.dicom_port)).replace("{aet}", server.ae_title)
                       for c in command]
            return subprocess.call(command)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
