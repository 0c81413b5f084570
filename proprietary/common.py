"""What the fast API's blueprints share."""
from __future__ import annotations

import functools

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
