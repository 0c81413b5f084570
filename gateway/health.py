"""Liveness and readiness probes for load balancers and orchestrators."""
from __future__ import annotations

import logging

from flask import jsonify
from flask_smorest import Blueprint

from gateway.web import services

logger = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Liveness and readiness probes")


@blp.route("/healthz")
@blp.doc(summary="The process is alive", responses={200: {"description": "alive"}})
def healthz():
    return jsonify(status="ok")


@blp.route("/readyz")
@blp.doc(summary="The index and blob stores are reachable",
         responses={200: {"description": "ready"}, 503: {"description": "a store is unreachable"}})
def readyz():
    checks = services().ping()
    ready = all(v == "ok" for v in checks.values())
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = "5"
    return response
