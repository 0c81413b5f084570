"""Shares of studies and series with users, clinics and links: ``/api/v1/shares``."""
from __future__ import annotations

import time

from flask import Response
from flask_smorest import Blueprint

from auth import policy
from gateway.times import iso, parse_time
from gateway.web import principal, public_base, services
from proprietary.common import BODY, QUERY, requires
from proprietary.schemas import (
    ShareCreateSchema,
    ShareListQuery,
    ShareListSchema,
    ShareSchema,
)
from storage.records import ShareRecord

blp = Blueprint("shares", __name__, url_prefix="/api/v1/shares",
                description="Shares of studies and series with users, clinics and links")


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
        template = services().settings["auth.share_link_url"]
        body["url"] = (template.format(study=share.study_uid, series=share.series_uid or "", token=token) if template
                       else public_base() + f"/dicom-web/studies/{share.study_uid}/metadata?share={token}")
    return body


@blp.route("", methods=["POST"])
@requires(policy.SHARE, "shares")
@blp.arguments(ShareCreateSchema, **BODY)
@blp.response(201, ShareListSchema)
@blp.doc(summary="Share a study or series",
         description="One share per target; a link target's token is in the answer only. expires_at (ISO 8601 or "
                     "ms) or ttl (seconds; default auth.share_default_ttl, at most auth.share_max_ttl). Needs the "
                     "share role; 404 for a study the clinic does not hold.")
def create_share(body: dict):
    created = services().shares.create(
        principal(), study=body["study"].strip(), series=(body.get("series") or "").strip() or None,
        targets=body["targets"], permissions=body.get("permissions"),
        expires_at_ms=parse_time(body.get("expires_at"), "expires_at"), ttl=body.get("ttl"))
    return {"shares": [share_json(share, token) for share, token in created]}


@blp.route("", methods=["GET"])
@blp.arguments(ShareListQuery, **QUERY)
@blp.response(200, ShareListSchema)
@blp.doc(summary="List shares",
         description="direction=outgoing (default: the clinic's shares, needs the share role; all=true includes "
                     "revoked and expired ones) or incoming (active shares with this principal).")
def list_shares(args: dict):
    found = services().shares.list(principal(), incoming=args["direction"] == "incoming",
                                   study=args.get("study") or None, active_only=not args["all"],
                                   limit=args["limit"], offset=args["offset"])
    return {"shares": [share_json(s) for s in found]}


@blp.route("/<share_id>", methods=["GET"])
@blp.response(200, ShareSchema)
@blp.doc(summary="One share (of the clinic, or with this principal)")
def get_share(share_id: str):
    return share_json(services().shares.get(principal(), share_id))


@blp.route("/<share_id>", methods=["DELETE"])
@blp.response(204)
@blp.doc(summary="Revoke a share", description="Takes effect on the next request of its targets.")
def revoke_share(share_id: str):
    services().shares.revoke(principal(), share_id)
    return Response(status=204)
