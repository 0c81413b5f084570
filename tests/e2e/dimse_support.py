"""Helpers of the DIMSE end-to-end tests: a gateway with DIMSE on free ports, test files
with fresh UIDs, dcmtk runners and pynetdicom SCUs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from tests.conftest import ServerProcess
from tests.data import sample_file
from tests.helpers import free_port

SCP_AE = "GWSCP"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # no Nagle stalls (dcmtk idles ~50 ms per instance without it)

# The peers of the shared test listener (dimse.peers).
PEERS = [
    {"ae_title": "GWTEST", "hosts": ["127.0.0.1"]},
    {"ae_title": "STOREONLY", "allow": ["echo", "store"]},
    {"ae_title": "NOECHO", "allow": ["store", "find", "get"]},
    {"ae_title": "FINDONLY", "allow": ["find"]},
    {"ae_title": "CLINIC2", "clinic": "clinic2"},
    {"ae_title": "WRONGHOST", "hosts": ["192.0.2.1"]},  # TEST-NET-1: never the test's address
]

# storescu proposes a compressed transfer syntax only when told which one.
STORESCU_FLAGS = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd",
}
# Files of pydicom's test set, one per transfer syntax family (see tests/data.py).
SAMPLES = ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
           "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm",
           "image_dfl.dcm"]


class DimseServer(ServerProcess):
    """``gateway serve`` with the DIMSE listener (a child process) on a free loopback port."""

    def __init__(self, data_dir: Path, *, peers=PEERS, destinations=(), rules=(), env: dict | None = None):
        self.dimse_port = free_port()
        dimse_env = {
            "GATEWAY_LOG__LEVEL": "info",
            "GATEWAY_STORAGE__FSYNC": "false",
            "GATEWAY_DIMSE__ENABLED": "true",
            "GATEWAY_DIMSE__HOST": "127.0.0.1",
            "GATEWAY_DIMSE__PORT": str(self.dimse_port),
            "GATEWAY_DIMSE__AE_TITLE": SCP_AE,
            "GATEWAY_DIMSE__PEERS": json.dumps(list(peers)),
            "GATEWAY_DIMSE__DESTINATIONS": json.dumps(list(destinations)),
            "GATEWAY_FORWARD__RULES": json.dumps(list(rules)),
        }
        super().__init__(data_dir, env={**dimse_env, **(env or {})})

    def start(self, timeout: float = 90) -> "DimseServer":
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.dimse_port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log()}")
                time.sleep(0.1)
        raise RuntimeError(f"the DIMSE listener did not start: {self.log()}")


def fresh_copy(name_or_path: str | Path, folder: Path, **attributes) -> Path:
    """A pydicom test file with new Study/Series/SOP Instance UIDs (and ``attributes``), its
    transfer syntax and pixel data unchanged, written as Part 10 into ``folder``."""
    src = Path(name_or_path) if Path(name_or_path).is_file() else sample_file(str(name_or_path))
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = attributes.pop("StudyInstanceUID", None) or generate_uid()
    ds.SeriesInstanceUID = attributes.pop("SeriesInstanceUID", None) or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{src.stem}.{ds.SOPInstanceUID[-12:]}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part 10 file (what goes on the wire), without preamble and meta."""
    from pynetdicom.dsutils import split_dataset

    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def storescu(server: DimseServer, files: list[Path], *, aet: str = "GWTEST") -> list[subprocess.CompletedProcess]:
    """dcmtk storescu, one run per transfer syntax (each with the flag that proposes it)."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(STORESCU_FLAGS.get(ts, ""), []).append(path)
    runs = []
    for flag, paths in groups.items():
        command = ["storescu", "-R", *([flag] if flag else []), "-aet", aet, "-aec", SCP_AE,
                   "127.0.0.1", str(server.dimse_port), *map(str, paths)]
        runs.append(subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV, timeout=120))
    return runs


def dcmtk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)


def nodelay(event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def associate(server: DimseServer, ae: AE, **kwargs):
    """A pynetdicom association with the test listener (TCP_NODELAY on our side too)."""
    handlers = [(evt.EVT_CONN_OPEN, nodelay), *kwargs.pop("evt_handlers", [])]
    return ae.associate("127.0.0.1", server.dimse_port, ae_title=SCP_AE, evt_handlers=handlers, **kwargs)
