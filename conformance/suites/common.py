"""Helpers the DICOMweb suites share: multipart bodies, DICOM JSON, STOW and QIDO calls."""
from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pydicom

from conformance.data import Instance, Study
from conformance.suites.base import Context
from conformance.targets import encode_uri_component, query_string

DICOM_JSON = "application/dicom+json"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"'
ACCEPT_DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_OCTETS = 'multipart/related; type="application/octet-stream"'
ACCEPT_OCTETS_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
# OHIF v3 / cornerstone's frame request (unquoted type, transfer-syntax=*).
OHIF_FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"

# Tags
STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"
RETRIEVE_URL, FAILED_SEQ, REFERENCED_SEQ, FAILURE_REASON = "00081190", "00081198", "00081199", "00081197"
REF_SOP_CLASS, REF_SOP_INSTANCE, WARNING_REASON = "00081150", "00081155", "00081196"


# --- multipart ---------------------------------------------------------------------------

def multipart_body(parts: Iterable[bytes], boundary: str, part_type: str = "application/dicom") -> bytes:
    out = io.BytesIO()
    for data in parts:
        out.write(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def new_boundary() -> str:
    return f"conformance-{uuid.uuid4().hex}"


@dataclass
class Part:
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def boundary_of(content_type: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        name, _, value = piece.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    return None


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/related body (RFC 2046 5.1); raises ValueError if malformed."""
    boundary = boundary_of(content_type)
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise ValueError(f"not a multipart response with a boundary: Content-Type {content_type!r}")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3:
        raise ValueError(f"multipart body has no part delimited by {delimiter.decode('latin-1')!r}")
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break  # close delimiter
        if piece.startswith(b"\r\n"):
            piece = piece[2:]
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part has no blank line between its headers and its body")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, content))
    return parts


def media_param(content_type: str, name: str) -> str | None:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None


def read_dicom(data: bytes, *, pixels: bool = True) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=False)


# --- DICOM JSON ------------------------------------------------------------------------

def values(item: dict, tag: str) -> list:
    element = item.get(tag) or {}
    return element.get("Value") or []


def first(item: dict, tag: str) -> Any:
    found = values(item, tag)
    return found[0] if found else None


def text(item: dict, tag: str) -> str | None:
    value = first(item, tag)
    if isinstance(value, dict):  # PN
        return value.get("Alphabetic")
    return None if value is None else str(value)


def json_body(ctx: Context, response, *, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        ctx.fail(f"{what}: the body is not JSON (Content-Type {response.headers.get('Content-Type')!r})")


def expect_status(ctx: Context, response, expected: int | tuple[int, ...], what: str) -> None:
    wanted = (expected,) if isinstance(expected, int) else expected
    ctx.expect(response.status_code in wanted,
               f"{what}: HTTP {response.status_code}, expected {' or '.join(map(str, wanted))}")


def error_json(ctx: Context, response, what: str) -> Any:
    """The DICOM JSON body of a failure (409/202) response; a missing Content-Type is tolerated."""
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    ctx.expect(ctype in (DICOM_JSON, "application/json", ""),
               f"{what}: Content-Type {response.headers.get('Content-Type')!r}, expected {DICOM_JSON}")
    return json_body(ctx, response, what=what)


def expect_dicom_json(ctx: Context, response, what: str) -> Any:
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    ctx.expect(ctype in (DICOM_JSON, "application/json"),
               f"{what}: Content-Type {response.headers.get('Content-Type')!r}, expected {DICOM_JSON}")
    return json_body(ctx, response, what=what)


# --- STOW ----------------------------------------------------------------------------------

def stow(ctx: Context, instances: list[Instance] | list[bytes], *, study: str | None = None,
         content_type: str | None = None, boundary: str | None = None, note: str = "", chunked: bool = False):
    """POST a multipart/related body (dicomweb-client's Content-Type by default)."""
    boundary = boundary or new_boundary()
    datas = [i.data if isinstance(i, Instance) else i for i in instances]
    body = multipart_body(datas, boundary)
    ctype = content_type or f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    ctype = ctype.replace("{boundary}", boundary)
    path = f"studies/{study}" if study else "studies"
    data: Any = body
    if chunked:
        data = _chunks(body, 64 * 1024)
    return ctx.web.post(path, headers={"Content-Type": ctype, "Accept": DICOM_JSON}, data=data, note=note)


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


def stored_ok(ctx: Context, response, instances: list[Instance], what: str) -> dict:
    """Check a 200 STOW response that references every instance; return its body."""
    expect_status(ctx, response, 200, what)
    body = expect_dicom_json(ctx, response, what)
    ctx.expect(isinstance(body, dict), f"{what}: the response is not a DICOM JSON object")
    referenced = {text(item, REF_SOP_INSTANCE) for item in values(body, REFERENCED_SEQ)}
    missing = [i.sop for i in instances if i.sop not in referenced]
    ctx.expect(not missing, f"{what}: ReferencedSOPSequence (0008,1199) lacks {len(missing)} of the "
                            f"{len(instances)} stored instances")
    return body


def store_study(ctx: Context, study: Study, what: str) -> None:
    response = stow(ctx, study.instances, note=f"set-up: store study {study.uid}")
    stored_ok(ctx, response, study.instances, what)


# --- QIDO ----------------------------------------------------------------------------------

def qido(ctx: Context, path: str, pairs: list[tuple[str, str]] | None = None, *, encoder=encode_uri_component,
         accept: str | None = DICOM_JSON, note: str = "", headers: dict | None = None):
    query = query_string(pairs or [], encoder) if pairs else None
    sent = dict(headers or {})
    if accept:
        sent["Accept"] = accept
    return ctx.web.get(path, query=query, headers=sent, note=note)


def qido_results(ctx: Context, response, what: str) -> list[dict]:
    """A QIDO answer's results: 200 with a JSON array (204 or an empty array: none)."""
    if response.status_code == 204:
        return []
    expect_status(ctx, response, 200, what)
    if not response.content.strip():
        return []
    body = expect_dicom_json(ctx, response, what)
    ctx.expect(isinstance(body, list), f"{what}: the response is not a JSON array")
    return body


def uids(results: list[dict], tag: str) -> list[str]:
    return [str(text(r, tag)) for r in results]


def dumps(obj: Any, limit: int = 300) -> str:
    out = json.dumps(obj)
    return out if len(out) <= limit else out[:limit] + "..."
