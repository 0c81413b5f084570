"""Small request helpers shared by the HTTP front doors (DICOMweb, the fast API)."""
from __future__ import annotations

from flask import current_app, g, request

from auth.base import Principal
from gateway.errors import BadRequest


def services():
    """The app's :class:`gateway.services.Services`."""
    return current_app.extensions["gateway"]


def principal() -> Principal:
    """The principal of the current request, established by the app before any view runs."""
    return g.principal


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
