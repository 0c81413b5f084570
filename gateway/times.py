"""Times as the API and the CLI show and take them: ISO 8601 in UTC, or milliseconds since the epoch."""
from __future__ import annotations

from datetime import datetime, timezone

from gateway.errors import BadRequest


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch → ``2025-01-31T12:00:00.000Z``."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(value, name: str) -> int | None:
    """ISO 8601 (``2025-01-31T12:00:00Z``, a date) or milliseconds since the epoch → ms;
    :class:`BadRequest` naming ``name`` otherwise."""
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
