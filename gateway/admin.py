"""Administration endpoints under /api/v1/admin: the forward queue (list, retry).

Admins see and retry their own clinic's forwards; admins of ``auth.operator_clinics`` every
clinic's.

``init_app`` also registers the forwarding plugin on the app's plugin manager, so that
every instance stored through this app (STOW-RS, the fast API) is queued for the
forwarding rules, like those stored by C-STORE and ``gateway import``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

from flask import current_app, g, jsonify, request
from flask_smorest import Blueprint

from auth import policy
from auth.audit import OK
from auth.base import Principal
from gateway.errors import BadRequest, NotFound
from gateway.web import int_arg

logger = logging.getLogger(__name__)

blp = Blueprint("admin", __name__, url_prefix="/api/v1/admin", description="Administration: the forward queue")

_STATUSES = ("pending", "failed")
_MAX_LIMIT = 1000


def _principal() -> Principal:
    """The request's principal, which must have the admin action (403 otherwise)."""
    principal = g.principal
    current_app.extensions["gateway"].access.require(principal, policy.ADMIN, resource="forwards")
    return principal


def _clinic(principal: Principal) -> str | None:
    """The clinic whose forwards a request may see: its own, or any (``?clinic=``) for the
    admins of ``auth.operator_clinics``."""
    asked = request.args.get("clinic") or None
    if principal.clinic_id in current_app.extensions["gateway"].settings["auth.operator_clinics"]:
        return asked
    if asked not in (None, principal.clinic_id):
        raise NotFound(f"clinic {asked} not found")
    return principal.clinic_id


def _audit(principal: Principal, detail: str) -> None:
    current_app.extensions["gateway"].audit.record("admin", OK, principal=principal, resource="forwards",
                                                   detail=detail)


def _index():
    return current_app.extensions["gateway"].index



def _item(item) -> dict:
    body = asdict(item)
    body.pop("lease_owner", None)
    return body


@blp.route("/forwards", methods=["GET"])
@blp.doc(summary="List queued forwards",
         description="Instances waiting to be forwarded by C-STORE (pending, with their next attempt) or "
                     "that gave up (failed, with the last error). Parameters: status=pending|failed, "
                     "clinic, limit (≤1000), offset. Times are milliseconds since the epoch.")
def list_forwards():
    principal = _principal()
    status = request.args.get("status") or None
    if status is not None and status not in _STATUSES:
        raise BadRequest(f"status={status!r}: expected pending or failed")
    clinic = _clinic(principal)
    index = _index()
    items = index.list_forwards(status=status, clinic_id=clinic, limit=int_arg("limit", 100, _MAX_LIMIT),
                                offset=int_arg("offset", 0))
    return jsonify({"counts": index.forward_counts(clinic), "items": [_item(i) for i in items]})


@blp.route("/forwards/retry", methods=["POST"])
@blp.doc(summary="Retry failed forwards",
         description='JSON body {"ids": [1, 2]} retries those; no body or {} retries every failed forward '
                     '(of ?clinic= if given). Answers {"retried": n}.')
def retry_forwards():
    principal = _principal()
    body = request.get_json(silent=True) if request.data else {}
    if body is None or not isinstance(body, dict):
        raise BadRequest('body must be a JSON object such as {"ids": [1, 2]}')
    ids = body.get("ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, int) for i in ids)):
        raise BadRequest('"ids" must be a list of integers')
    count = _index().retry_forwards(ids=ids, clinic_id=_clinic(principal), now_ms=int(time.time() * 1000))
    logger.info("admin: %d forward(s) pending again", count)
    _audit(principal, f"retried {count} forward(s)")
    return jsonify({"retried": count})


@blp.route("/forwards/<int:item_id>/retry", methods=["POST"])
@blp.doc(summary="Retry one failed forward")
def retry_forward(item_id: int):
    principal = _principal()
    if not _index().retry_forwards(ids=[item_id], clinic_id=_clinic(principal), now_ms=int(time.time() * 1000)):
        raise NotFound(f"no failed forward with id {item_id}")
    _audit(principal, f"retried forward {item_id}")
    return jsonify({"retried": 1})


def init_app(app, api) -> None:
    from gateway.dimse import forwarding

    services = app.extensions["gateway"]
    forwarding.rules_from_settings(services.settings)  # a rule naming an undeclared destination stops start-up
    api.register_blueprint(blp)
    forwarding.register(services.pm)
