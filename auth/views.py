"""The HTTP API of shares, the audit log and signed URLs, under /api/v1.

- ``POST /api/v1/shares``, ``GET /api/v1/shares[?direction=incoming&study=&all=true]``,
  ``GET /api/v1/shares/{id}``, ``DELETE /api/v1/shares/{id}``;
- ``GET /api/v1/audit`` (admins; filters ``user``, ``action``, ``outcome``, ``resource``,
  ``since``, ``until``, ``clinic`` for operators, ``limit``, ``offset``; ``format=jsonl`` exports
  JSON lines, oldest first);
- ``POST /api/v1/signed-urls``: a URL that works without an Authorization header.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from flask import Response, current_app, g, jsonify, request
from flask_smorest import Blueprint

from auth import policy
from auth.audit import OK, record_json, resource_name
from auth.base import Principal
from gateway.errors import BadRequest, NotFound
from gateway.web import int_arg, public_base
from storage.base import AuditQuery, ShareRecord

logger = logging.getLogger(__name__)

shares_blp = Blueprint("shares", __name__, url_prefix="/api/v1/shares",
                       description="Shares of studies and series with users, clinics and links")
audit_blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit", description="The audit log (admins)")
signed_blp = Blueprint("signed_urls", __name__, url_prefix="/api/v1/signed-urls",
                       description="Signed URLs for clients that cannot send an Authorization header")

_MAX_LIMIT = 1000


def blueprints() -> list[Blueprint]:
    return [shares_blp, audit_blp, signed_blp]


def _services():
    return current_app.extensions["gateway"]


def _principal() -> Principal:
    return g.principal


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(value, name: str) -> int | None:
    """ISO 8601 (``2025-01-31T12:00:00Z``, a date) or milliseconds since the epoch → ms."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}={text!r} is not an ISO 8601 time or milliseconds since the epoch") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)




def share_json(share: ShareRecord, token: str | None = None) -> dict:
    target: dict = {"type": share.target_type}
    if share.target_id:
        target["id"] = share.target_id
    if share.target_clinic:
        target["clinic"] = share.target_clinic
    body = {"id": share.id, "clinic": share.clinic_id, "study": share.study_uid, "series": share.series_uid,
            "target": target, "permissions": list(share.permissions), "created_by": share.created_by,
            "created_at": iso(share.created_at), "expires_at": iso(share.expires_at),
            "revoked_at": iso(share.revoked_at), "active": share.active(int(time.time() * 1000))}
    if token:
        body["token"] = token  # shown once: only its sha256 is kept
        template = current_app.config["GATEWAY_SETTINGS"]["auth.share_link_url"]
        body["url"] = (template.format(study=share.study_uid, series=share.series_uid or "", token=token) if template
                       else public_base() + f"/dicom-web/studies/{share.study_uid}/metadata?share={token}")
    return body


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


# --- shares ---------------------------------------------------------------------------

@shares_blp.route("", methods=["POST"])
@shares_blp.doc(summary="Share a study or series",
                description='Body: {"study": UID, "series": UID (optional), "targets": [{"type": "user", "id": '
                            '"u1", "clinic": "c2" (optional)}, {"type": "clinic", "id": "lab-1"}, {"type": "link"}], '
                            '"permissions": ["view", "download"] (default ["view"]), "expires_at": ISO 8601 or ms, '
                            'or "ttl": seconds (default auth.share_default_ttl)}. One share per target; a link '
                            "target's token is in the answer only. Needs the share role; 404 for a study the "
                            "clinic does not hold.")
def create_share():
    _services().access.require(_principal(), policy.SHARE, resource="shares")  # 403 before looking at the body
    body = _body()
    unknown = set(body) - {"study", "series", "targets", "permissions", "expires_at", "ttl"}
    if unknown:
        raise BadRequest(f"unknown key {sorted(unknown)[0]!r}")
    study, series = body.get("study"), body.get("series")
    if not isinstance(study, str) or not study.strip():
        raise BadRequest('"study" (a Study Instance UID) is required')
    if series is not None and (not isinstance(series, str) or not series.strip()):
        raise BadRequest('"series" must be a Series Instance UID')
    created = _services().shares.create(_principal(), study=study.strip(), series=series and series.strip(),
                                        targets=body.get("targets"), permissions=body.get("permissions"),
                                        expires_at_ms=parse_time(body.get("expires_at"), "expires_at"),
                                        ttl=body.get("ttl"))
    response = jsonify({"shares": [share_json(share, token) for share, token in created]})
    response.status_code = 201
    return response


@shares_blp.route("", methods=["GET"])
@shares_blp.doc(summary="List shares",
                description="direction=outgoing (default: the clinic's shares, needs the share role; all=true "
                            "includes revoked and expired ones) or incoming (active shares with this principal); "
                            "study=UID, limit, offset.")
def list_shares():
    direction = request.args.get("direction", "outgoing")
    if direction not in ("outgoing", "incoming"):
        raise BadRequest(f"direction={direction!r}: expected outgoing or incoming")
    found = _services().shares.list(_principal(), incoming=direction == "incoming",
                                    study=request.args.get("study") or None,
                                    active_only=request.args.get("all", "false").lower() != "true",
                                    limit=int_arg("limit", 100, _MAX_LIMIT), offset=int_arg("offset", 0))
    return jsonify({"shares": [share_json(s) for s in found]})


@shares_blp.route("/<share_id>", methods=["GET"])
@shares_blp.doc(summary="One share (of the clinic, or with this principal)")
def get_share(share_id: str):
    return jsonify(share_json(_services().shares.get(_principal(), share_id)))


@shares_blp.route("/<share_id>", methods=["DELETE"])
@shares_blp.doc(summary="Revoke a share", description="Takes effect on the next request of its targets. 204.")
def revoke_share(share_id: str):
    _services().shares.revoke(_principal(), share_id)
    return Response(status=204)


# --- audit ----------------------------------------------------------------------------

def _audit_query() -> AuditQuery:
    principal = _principal()
    services = _services()
    services.access.require(principal, policy.ADMIN, resource="audit")
    operator = principal.clinic_id in services.settings["auth.operator_clinics"]
    clinic = request.args.get("clinic") or None
    if not operator:
        if clinic not in (None, principal.clinic_id):
            raise NotFound(f"clinic {clinic} not found")
        clinic = principal.clinic_id
    known = {"user", "action", "outcome", "resource", "since", "until", "clinic", "limit", "offset", "format"}
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return AuditQuery(clinic_id=clinic, user_id=request.args.get("user") or None,
                      action=request.args.get("action") or None, outcome=request.args.get("outcome") or None,
                      resource=request.args.get("resource") or None,
                      since_ms=parse_time(request.args.get("since"), "since"),
                      until_ms=parse_time(request.args.get("until"), "until"))


@audit_blp.route("", methods=["GET"])
@audit_blp.doc(summary="Search the audit log",
               description="Admins see the records of their clinic (as actor or as owner of the resource); "
                           "admins of auth.operator_clinics see every clinic's (clinic= to filter) and failed "
                           "logins. Filters: user, action (login, search, read, store, delete, share, revoke, "
                           "sign, admin), outcome (ok, denied, not_found), resource (prefix, e.g. study:1.2.3), "
                           "since, until (ISO 8601 or ms). Newest first; limit (≤1000), offset. format=jsonl "
                           "exports every match as JSON lines, oldest first.")
def search_audit():
    query = _audit_query()
    services = _services()
    services.audit.record("admin", OK, principal=_principal(), resource="audit",
                          detail=request.query_string.decode(errors="replace")[:500] or None)
    if request.args.get("format") == "jsonl":
        query.limit = 10_000_000
        records = services.audit.export(query)

        def lines():
            for record in records:
                yield json.dumps(record_json(record), ensure_ascii=False) + "\n"

        response = Response(lines(), mimetype="application/x-ndjson")
        response.headers["Content-Disposition"] = "attachment; filename=audit.jsonl"
        return response
    if request.args.get("format") not in (None, "", "json"):
        raise BadRequest("format: expected json or jsonl")
    query.limit = int_arg("limit", 100, _MAX_LIMIT)
    query.offset = int_arg("offset", 0)
    return jsonify({"records": [record_json(r) for r in services.audit.search(query)]})


# --- signed URLs ----------------------------------------------------------------------

@signed_blp.route("", methods=["POST"])
@signed_blp.doc(summary="Make a signed URL",
                description='{"path": "/dicom-web/studies/1.2/thumbnail", "method": "GET", "params": {...}, '
                            '"ttl": 600}: a gateway URL that acts for this principal until it expires (every '
                            'access is checked again). {"study", "series", "instance", "ttl"}: a direct download '
                            "URL of the stored instance: S3 presigned when the blob store is S3 (checked now, "
                            "cannot be recalled), else a signed gateway URL. ttl ≤ auth.signed_url_max_ttl.")
def create_signed_url():
    body = _body()
    signer = current_app.extensions["gateway_auth"].signer
    principal = _principal()
    ttl = body.get("ttl")
    try:
        ttl = signer.ttl(ttl)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    base = public_base()
    if "instance" in body:
        return _instance_url(body, principal, signer, ttl, base)
    path, method = body.get("path"), str(body.get("method", "GET")).upper()
    if not isinstance(path, str) or not path.startswith("/dicom-web/") or ".." in path:
        raise BadRequest('"path" must be a path under /dicom-web/')
    if method not in ("GET", "HEAD"):
        raise BadRequest('"method" must be GET or HEAD')
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest('"params" must be an object of query parameters')
    query = signer.sign(method, path, principal, params=params, ttl=ttl)
    from urllib.parse import urlencode

    _services().audit.record("sign", OK, principal=principal, resource=path, detail=f"{method}, {ttl} s")
    return _created({"url": f"{base}{path}?{urlencode(query)}", "method": method,
                     "expires_at": iso(int(query["gw_exp"]) * 1000), "kind": "gateway"})


def _created(body: dict):
    response = jsonify(body)
    response.status_code = 201
    return response


def _instance_url(body: dict, principal: Principal, signer, ttl: int, base: str):
    from urllib.parse import urlencode

    from auth.access import DOWNLOAD

    study, series, sop = body.get("study"), body.get("series"), body.get("instance")
    if not all(isinstance(v, str) and v for v in (study, series, sop)):
        raise BadRequest('"study", "series" and "instance" UIDs are required')
    services = _services()
    record = services.retrieve.instances(principal, study, series, sop, need=DOWNLOAD)[0]
    presign = getattr(services.blobs, "presigned_get_url", None)
    if presign is not None:
        url = presign(record.blob_key, expires_in=ttl, download_name=f"{sop}.dcm", content_type="application/dicom")
        kind = "s3"
    else:
        path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        url = f"{base}{path}?{urlencode(signer.sign('GET', path, principal, ttl=ttl))}"
        kind = "gateway"
    services.audit.record("sign", OK, principal=principal, resource=resource_name(study, series, sop),
                          resource_clinic=record.clinic_id, detail=f"{kind} download URL, {ttl} s")
    return _created({"url": url, "method": "GET", "expires_at": iso(int((time.time() + ttl) * 1000)), "kind": kind})
