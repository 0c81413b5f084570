"""Administration under /api/v1/admin: the job queue (every kind), and its forwards.

Admins see and retry their own clinic's jobs; admins of ``auth.operator_clinics`` every
clinic's (``?clinic=`` to pick one). Every call is audited (``admin``).
"""
from __future__ import annotations

import logging

from flask import request
from flask_smorest import Blueprint

from auth import policy
from auth.audit import OK
from gateway.errors import NotFound
from gateway.services.jobs import job_summary, now_ms
from gateway.web import principal, services
from proprietary.common import BODY, QUERY, requires
from proprietary.schemas import (
    ForwardListSchema,
    JobListQueryArgs,
    JobListSchema,
    JobQueryArgs,
    RetriedSchema,
    RetryRequest,
)
from storage.records import Job

logger = logging.getLogger(__name__)

blp = Blueprint("admin", __name__, url_prefix="/api/v1/admin", description="Administration: the job queue")

FORWARD = "forward"  # the job kind of the forwarding plugin


def _scope(asked: str | None, resource: str) -> str | None:
    return services().access.admin_scope(principal(), asked, resource=resource)


def _audit(resource: str, detail: str) -> None:
    services().audit.record("admin", OK, principal=principal(), resource=resource, detail=detail)


def job_json(job: Job, now_ms: int | None = None) -> dict:
    body = {"id": job.id, "kind": job.kind, "clinic_id": job.clinic_id, "key": job.key, "status": job.status,
            "attempts": job.attempts, "next_attempt_at": job.next_attempt_at, "lease_until": job.lease_until,
            "progress": job.progress, "payload": job.payload, "last_error": job.last_error,
            "created_at": job.created_at, "updated_at": job.updated_at}
    if now_ms is not None and job.running(now_ms):
        body["status"] = "running"
    return body


def _retry(kind: str | None, body: dict, clinic: str | None, resource: str) -> int:
    count = services().jobs.retry(kind=kind, ids=body.get("ids"), clinic_id=clinic)
    what = f"{kind} job(s)" if kind else "job(s)"
    logger.info("admin: %d %s pending again", count, what)
    _audit(resource, f"retried {count} {what}")
    return count


# --- every kind ------------------------------------------------------------------------------

@blp.route("/jobs", methods=["GET"])
@requires(policy.ADMIN, "jobs")
@blp.arguments(JobListQueryArgs, **QUERY)
@blp.response(200, JobListSchema)
@blp.doc(summary="List the job queue",
         description="Jobs still to run (pending; running while a worker holds them) and the dead letter "
                     "(failed, with the last error), oldest first. Times are milliseconds since the epoch.")
def list_jobs(args: dict):
    clinic = _scope(args.get("clinic"), "jobs")
    jobs = services().jobs
    found = jobs.list_jobs(kind=args.get("kind"), status=args.get("status"), clinic_id=clinic, limit=args["limit"],
                           offset=args["offset"])
    now = now_ms()
    return {"counts": jobs.counts(kind=args.get("kind"), clinic_id=clinic), "items": [job_json(j, now) for j in found]}


@blp.route("/jobs/retry", methods=["POST"])
@requires(policy.ADMIN, "jobs")
@blp.arguments(RetryRequest, **BODY)
@blp.response(200, RetriedSchema)
@blp.doc(summary="Retry failed jobs", description='{"ids": [1, 2]} retries those; no body or {} every failed job.')
def retry_jobs(body: dict):
    return {"retried": _retry(None, body, _scope(None, "jobs"), "jobs")}


# --- forwards ----------------------------------------------------------------------------------

@blp.route("/forwards", methods=["GET"])
@requires(policy.ADMIN, "forwards")
@blp.arguments(JobQueryArgs, **QUERY)
@blp.response(200, ForwardListSchema)
@blp.doc(summary="List queued forwards",
         description="Instances waiting to be forwarded by C-STORE (pending, with their next attempt) or that gave "
                     "up (failed, with the last error). Times are milliseconds since the epoch.")
def list_forwards(args: dict):
    clinic = _scope(args.get("clinic"), "forwards")
    jobs = services().jobs
    found = jobs.list_jobs(kind=FORWARD, status=args.get("status"), clinic_id=clinic, limit=args["limit"],
                           offset=args["offset"])
    counts = jobs.counts(kind=FORWARD, clinic_id=clinic)
    return {"counts": {"pending": counts["pending"] + counts["running"], "failed": counts["failed"]},
            "items": [job_summary(j) for j in found]}


@blp.route("/forwards/retry", methods=["POST"])
@requires(policy.ADMIN, "forwards")
@blp.arguments(RetryRequest, **BODY)
@blp.response(200, RetriedSchema)
@blp.doc(summary="Retry failed forwards",
         description='{"ids": [1, 2]} retries those; no body or {} retries every failed forward (of ?clinic= if '
                     'given).')
def retry_forwards(body: dict):
    return {"retried": _retry(FORWARD, body, _scope(request.args.get("clinic"), "forwards"), "forwards")}


@blp.route("/forwards/<int:job_id>/retry", methods=["POST"])
@requires(policy.ADMIN, "forwards")
@blp.response(200, RetriedSchema)
@blp.doc(summary="Retry one failed forward")
def retry_forward(job_id: int):
    clinic = _scope(None, "forwards")
    if not services().jobs.retry(kind=FORWARD, ids=[job_id], clinic_id=clinic):
        raise NotFound(f"no failed forward with id {job_id}")
    _audit("forwards", f"retried forward {job_id}")
    return {"retried": 1}
