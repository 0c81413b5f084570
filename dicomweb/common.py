"""Helpers every DICOMweb resource shares: base URL, principal, DICOM JSON responses."""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

from flask import Response, request

from dicomweb.media_types import parse_accept
from gateway.errors import NotAcceptable
from gateway.web import public_base

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"


def base_url() -> str:
    """The DICOMweb root as clients reach it (``server.public_url`` wins over the request)."""
    return public_base() + PREFIX


def require_json_accept() -> str:
    """QIDO and metadata answer DICOM JSON; any other Accept is a 406."""
    ranges = parse_accept(request.headers.get("Accept"))
    for r in ranges:
        if r.media_type in (DICOM_JSON, "application/json") or r.matches(DICOM_JSON):
            return DICOM_JSON if r.media_type != "application/json" else "application/json"
    raise NotAcceptable(
        f"cannot answer with any of Accept: {request.headers.get('Accept')!r}; "
        f"this resource is available as {DICOM_JSON}")


def json_response(body: Any, status: int = 200, media_type: str = DICOM_JSON) -> Response:
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")), status=status,
                    mimetype=media_type)


def json_array_stream(items: Iterable[str], *, replace: tuple[str, str] | None = None) -> Iterator[bytes]:
    """Stream a JSON array from already-serialized items, in chunks of ~256 KB."""
    buffer: list[str] = ["["]
    size = 1
    first = True
    for item in items:
        if replace:
            item = item.replace(*replace)
        if not first:
            buffer.append(",")
        buffer.append(item)
        first = False
        size += len(item)
        if size > 256 * 1024:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    buffer.append("]")
    yield "".join(buffer).encode()


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}
