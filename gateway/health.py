"""Liveness and readiness probes for load balancers and orchestrators, and the Prometheus metrics."""
from __future__ import annotations

import hmac
import logging
import socket

from flask import Response, jsonify, request
from flask_smorest import Blueprint

from gateway import metrics
from gateway.errors import NotAuthenticated, NotAuthorized
from gateway.proxies import address_in, parse_networks
from gateway.web import services
from gateway.worker import JobWorker

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


@blp.route("/metrics")
@blp.doc(summary="Prometheus metrics of every process of the gateway",
         description="text/plain; version=0.0.4. With metrics.token set, only with Authorization: Bearer "
                     "<metrics.token>; without, only from the addresses of metrics.allow (default loopback).",
         responses={200: {"description": "the metrics", "content": {"text/plain": {}}},
                    401: {"description": "metrics.token is set and was not given"},
                    403: {"description": "not from an address of metrics.allow"}})
def prometheus_metrics():
    settings = services().settings
    token = settings["metrics.token"]
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise NotAuthenticated("/metrics needs Authorization: Bearer <metrics.token>")
    elif not address_in(request.remote_addr or "", parse_networks(settings["metrics.allow"])):
        raise NotAuthorized(f"/metrics answers only to metrics.allow ({', '.join(settings['metrics.allow'])}) "
                            "or with metrics.token", action="metrics")
    body, content_type = metrics.exposition(services(), JobWorker.for_services(services()).kinds, ready_checks)
    return Response(body, content_type=content_type)


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
    return _answer(ready_checks())


def ready_checks() -> dict[str, str]:
    """``ok`` or why not, for each store and each enabled door besides HTTP."""
    checks = services().ping()
    if services().settings["dimse.enabled"]:
        checks["dimse"] = dimse_check(services().settings)
    return checks


@blp.route("/readyz/dimse")
@blp.doc(summary="The DIMSE door alone: its listener accepts connections and the stores are reachable "
                 "(for the health check of a TCP load balancer in front of the DIMSE port)",
         responses={200: {"description": "ready"}, 503: {"description": "not ready, or DIMSE is not enabled"}})
def readyz_dimse():
    if not services().settings["dimse.enabled"]:
        return _answer({"dimse": "DIMSE is not enabled (dimse.enabled = false)"})
    return _answer(ready_checks())
