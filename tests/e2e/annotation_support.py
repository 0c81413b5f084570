"""Helpers of the annotation and mask end-to-end tests (and the mask benchmark): a stored
series, PNG masks made here (zlib, no imaging library), tokens with profile claims."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pydicom
import requests
from pydicom.uid import generate_uid

from tests.services import dicom_instance, stow


def png(width: int = 64, height: int = 64, *, seed: int = 0) -> bytes:
    """An 8-bit grayscale PNG: a filled disc whose size depends on ``seed`` (one label's mask)."""
    radius = (min(width, height) // 4) + seed % (min(width, height) // 4 or 1)
    cx, cy = width // 2, height // 2
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        rows.extend(255 if (x - cx) ** 2 + (y - cy) ** 2 <= radius * radius else 0 for x in range(width))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
            + chunk(b"IEND", b""))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_series(base_url: str, headers: dict, n: int, *, size: int = 16,
                 shape: tuple[int, int] | None = None) -> tuple[str, str, list[str]]:
    """A new study with one series of ``n`` instances (instance numbers 1..n) stored by STOW-RS,
    ``size``² pixels or ``shape`` (Rows, Columns); (study, series, SOP Instance UIDs in slice order)."""
    study, series = generate_uid(), generate_uid()
    sops, bodies = [], []
    for number in range(1, n + 1):
        ds = pydicom.dcmread(io.BytesIO(dicom_instance(study, series, size=size, seed=number)))
        ds.InstanceNumber = number
        if shape is not None:
            ds.Rows, ds.Columns = shape
            ds.PixelData = bytes(2 * shape[0] * shape[1])
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        bodies.append(out.getvalue())
        sops.append(ds.SOPInstanceUID)
    response = stow(base_url, bodies, headers=headers)
    assert response.status_code == 200, response.text[:500]
    return study, series, sops


def put_signed(upload: dict, data: bytes, **kw) -> requests.Response:
    """PUT ``data`` to a signed upload as answered by …/signed-url (its headers, exactly)."""
    headers = {k: v for k, v in upload["headers"].items() if k.lower() != "content-length"}
    return requests.request(upload["method"], upload["url"], data=data, headers={**headers, **kw.pop("headers", {})},
                            timeout=30, **kw)
