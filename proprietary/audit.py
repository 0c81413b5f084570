"""The audit log for administrators: ``GET /api/v1/audit``."""
from __future__ import annotations

import json

from flask import Response, request
from flask_smorest import Blueprint

from auth import policy
from auth.audit import OK, record_json
from gateway.times import parse_time
from gateway.web import principal, services
from proprietary.common import QUERY, requires
from proprietary.schemas import AuditListSchema, AuditQueryArgs
from storage.records import AuditQuery

blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit", description="The audit log (admins)")

EXPORT_LIMIT = 10_000_000


@blp.route("", methods=["GET"])
@requires(policy.ADMIN, "audit")
@blp.arguments(AuditQueryArgs, **QUERY)
@blp.response(200, AuditListSchema)
@blp.doc(summary="Search the audit log",
         description="Admins see the records of their clinic (as actor or as owner of the resource); admins of "
                     "auth.operator_clinics see every clinic's (clinic= to filter) and failed logins. Newest "
                     "first. format=jsonl exports every match as JSON lines (application/x-ndjson), oldest first.")
def search_audit(args: dict):
    who = principal()
    audit = services().audit
    clinic = services().access.admin_scope(who, args.get("clinic"), resource="audit")
    query = AuditQuery(clinic_id=clinic, user_id=args.get("user") or None, action=args.get("action") or None,
                       outcome=args.get("outcome") or None, resource=args.get("resource") or None,
                       since_ms=parse_time(args.get("since"), "since"), until_ms=parse_time(args.get("until"), "until"))
    audit.record("admin", OK, principal=who, resource="audit",
                 detail=request.query_string.decode(errors="replace")[:500] or None)
    if args["format"] == "jsonl":
        query.limit = EXPORT_LIMIT
        records = audit.export(query)

        def lines():
            for record in records:
                yield json.dumps(record_json(record), ensure_ascii=False) + "\n"

        response = Response(lines(), mimetype="application/x-ndjson")
        response.headers["Content-Disposition"] = "attachment; filename=audit.jsonl"
        return response
    query.limit, query.offset = args["limit"], args["offset"]
    return {"records": [record_json(r) for r in audit.search(query)]}
