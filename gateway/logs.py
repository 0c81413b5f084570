"""Structured logs: every line carries the request id of the request that wrote it."""
from __future__ import annotations

import contextvars
import json
import logging
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


# Structured parts a record may carry (``logger.info(..., extra={"access": {...}})``): the
# JSON format nests them as objects, the text format shows only the message.
STRUCTURED = ("access", "audit")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message; an access line's
    fields at the top level, an audit record nested under ``audit``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            entry["audit"] = audit
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class PydicomDataFilter(logging.Filter):
    """pydicom logs an ERROR for bytes it cannot make sense of (a value it cannot convert, a
    delimiter out of place) and then raises or carries on; ingest refuses such an instance
    and logs why. A client's malformed file is not a server error: those lines are warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """The terminal's format: an audit record's fields follow its message as JSON."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        audit = getattr(record, "audit", None)
        return f"{line} {json.dumps(audit, ensure_ascii=False, default=str)}" if isinstance(audit, dict) else line


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_gateway", False):
            root.removeHandler(old)
    handler._gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(f, PydicomDataFilter) for f in pydicom_logger.filters):
        pydicom_logger.addFilter(PydicomDataFilter())
    for noisy in ("pynetdicom", "PIL", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
