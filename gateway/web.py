"""Small request helpers shared by the HTTP front doors (DICOMweb, the fast API)."""
from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import current_app, g, request
from gunicorn.http.errors import ParseException as _FramingError

from auth.base import Principal
from gateway.errors import BadRequest


def error_body(status: int, message: str, **errors: Any) -> dict[str, Any]:
    """The JSON error shape of every front door (flask-smorest's)."""
    body: dict[str, Any] = {"code": status, "status": HTTPStatus(status).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return body


def services():
    """The app's :class:`gateway.services.Services`."""
    return current_app.extensions["gateway"]


def principal() -> Principal:
    """The principal of the current request, established by the app before any view runs."""
    return g.principal


class RequestBody:
    """The request stream, with a body that breaks off (a client that went away: gunicorn
    raises NoMoreData, an OSError) or whose chunked framing is broken (a chunk size that is not
    hexadecimal or lies, a missing CRLF: gunicorn's ParseException) turned into a 400 naming
    the problem instead of a 500."""

    def __init__(self, stream, chunk_size: int = 1024 * 1024):
        self._stream = stream
        self.chunk_size = chunk_size

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except OSError as exc:
            raise BadRequest(f"request body ended before it was complete: {exc}") from None
        except _FramingError as exc:
            raise BadRequest(f"request body is not valid HTTP/1.1 framing: {type(exc).__name__}: {exc}") from None

    def __iter__(self):
        while chunk := self.read(self.chunk_size):
            yield chunk


def request_body(chunk_size: int = 1024 * 1024) -> RequestBody:
    return RequestBody(request.stream, chunk_size)


def int_arg(name: str, default: int | None, maximum: int | None = None) -> int | None:
    """A non-negative integer query parameter, 400 naming it when malformed or out of range."""
    raw = request.args.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r} is not an integer") from None
    if value < 0 or (maximum is not None and value > maximum):
        raise BadRequest(f"query parameter {name}={raw!r} must be between 0 and {maximum}")
    return value


def public_base() -> str:
    """scheme://host[:port] as clients reach the gateway (``server.public_url`` wins)."""
    public = current_app.config["GATEWAY_SETTINGS"]["server.public_url"].rstrip("/")
    return public or request.host_url.rstrip("/")
