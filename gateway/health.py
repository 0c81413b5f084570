"""Liveness and readiness probes for load balancers and orchestrators."""
from __future__ import annotations

import logging

from flask import jsonify
from flask_smorest import Blueprint

from storage.errors import StorageError

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
    from gateway.app import services_of

    services = services_of()
    checks = {}
    ready = True
    for name, store in (("index", services.index), ("blobs", services.blobs)):
        try:
            store.ping()
            checks[name] = "ok"
        except (StorageError, OSError) as exc:
            checks[name] = f"unavailable: {exc}"
            ready = False
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = "5"
    return response
