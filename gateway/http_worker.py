"""The gunicorn worker the gateway runs: gthread, with gunicorn's own answers (a malformed
request line, headers too long or too many, broken chunked framing found before the app
reads the body) in the JSON error shape of the app instead of gunicorn's HTML page, and a
connection closed honestly after refusing a large body.

gunicorn has no hook for those answers: ``Worker.handle_error`` picks the status and message
and hands them to ``gunicorn.util.write_error``, which this worker replaces in its own
process with a writer of the same signature.
"""
from __future__ import annotations

import json

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

from gateway.web import error_body

_HINTS = {
    400: "the request is not valid HTTP/1.1 (a request line must be ASCII: percent-encode the URL)",
    414: "the request line is longer than server.max_request_line",
    431: "request headers are longer than server.max_header_bytes or more than server.max_headers",
}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    message = f"{mesg or reason}: {_HINTS[status_int]}" if status_int in _HINTS else (mesg or reason)
    body = json.dumps(error_body(status_int, message)).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn drains at most this much of a body the app left unread before it reads the next
# request of a kept-alive connection; beyond it, it closes the connection, though the response
# announced keep-alive (a client reusing it then fails on its next request).
_DRAINED = 64 * 1024


def _big_body(environ) -> bool:
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return True
    try:
        return int(environ.get("CONTENT_LENGTH") or 0) > _DRAINED
    except ValueError:
        return True


def close_after_refusals(app):
    """WSGI middleware: an error answer to a request with a large body (which the app may not
    have read: a 401 before a STOW body, a 413 at the part limit) says ``Connection: close``
    and closes, instead of announcing a keep-alive that gunicorn would not keep."""
    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            if status[:1] in ("4", "5") and _big_body(environ):
                response = getattr(start_response, "__self__", None)  # gunicorn's Response
                if hasattr(response, "force_close"):
                    response.force_close()
            return start_response(status, headers, exc_info)
        return app(environ, start)
    return wrapped


class GatewayWorker(ThreadWorker):
    def init_process(self) -> None:
        util.write_error = write_json_error
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = close_after_refusals(self.wsgi)


class GatewayLogger(Logger):
    """gunicorn's own lines (boot, worker exits, refused requests) through the gateway's log
    handler, in its text or JSON format (``log.format``), not in a format of their own."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.handlers.clear()
            log.propagate = True
