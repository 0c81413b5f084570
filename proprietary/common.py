"""What the fast API's blueprints share."""
from __future__ import annotations

import functools
import json
from typing import Any, Iterable

from flask import Response
from marshmallow import RAISE

from gateway.web import principal, services

# Query schemas refuse unknown parameters (webargs would drop them silently).
QUERY = {"location": "query", "unknown": RAISE, "error_status_code": 400}
BODY = {"error_status_code": 400}


def requires(action: str, resource: str):
    """403 before anything else (the body is not even read) unless the principal's role may do
    ``action`` (:mod:`auth.policy`). Goes between ``@blp.route`` and ``@blp.arguments``."""
    def decorate(view):
        @functools.wraps(view)
        def checked(*args, **kwargs):
            services().access.require(principal(), action, resource=resource)
            return view(*args, **kwargs)

        return checked

    return decorate


# --- Server-Sent Events (upload and preview progress) -------------------------------------------
EVENT_POLL = 0.5  # seconds between two looks at what a stream follows (state is in the index store)
KEEP_ALIVE = 15.0  # seconds between two SSE comments on a quiet stream


def sse_event(event_id: int, event: str, data: Any) -> str:
    """One Server-Sent Event: its id (for Last-Event-ID), type and JSON data."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def sse_response(events: Iterable[str]) -> Response:
    """A text/event-stream response of ``events`` (a reconnect hint first), never buffered by a proxy."""
    def stream():
        yield f"retry: {int(EVENT_POLL * 4000)}\n\n"
        yield from events

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
