"""Liveness and readiness probes for load balancers and orchestrators."""
from __future__ import annotations

import logging
import socket

from flask import jsonify
from flask_smorest import Blueprint

from gateway.web import services

logger = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Liveness and readiness probes")


@blp.route("/healthz")
@blp.doc(summary="The process is alive", responses={200: {"description": "alive"}})
def healthz():
    return jsonify(status="ok")


def dimse_check(settings) -> str:
    """Whether the DIMSE listener (a child process of ``gateway serve``) accepts connections."""
    host, port = settings["dimse.host"], settings["dimse.port"]
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=1):
            return "ok"
    except OSError as exc:
        return f"the DIMSE listener does not accept connections on {target}:{port} ({exc.strerror or exc})"


def _answer(checks: dict[str, str]):
    ready = all(v == "ok" for v in checks.values())
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = "5"
    return response


@blp.route("/readyz")
@blp.doc(summary="Every enabled door can serve: the index and blob stores are reachable, and the DIMSE "
                 "listener accepts connections when dimse.enabled",
         responses={200: {"description": "ready"}, 503: {"description": "a store is unreachable or the DIMSE "
                                                                       "listener is not listening"}})
def readyz():
    checks = services().ping()
    if services().settings["dimse.enabled"]:
        checks["dimse"] = dimse_check(services().settings)
    return _answer(checks)


@blp.route("/readyz/dimse")
@blp.doc(summary="The DIMSE door alone: its listener accepts connections and the stores are reachable "
                 "(for the health check of a TCP load balancer in front of the DIMSE port)",
         responses={200: {"description": "ready"}, 503: {"description": "not ready, or DIMSE is not enabled"}})
def readyz_dimse():
    settings = services().settings
    if not settings["dimse.enabled"]:
        return _answer({"dimse": "DIMSE is not enabled (dimse.enabled = false)"})
    return _answer({**services().ping(), "dimse": dimse_check(settings)})
