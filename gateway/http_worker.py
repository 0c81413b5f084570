"""The gunicorn worker the gateway runs: gthread, with gunicorn's own answers (a malformed
request line, headers too long or too many, broken chunked framing found before the app
reads the body) in the JSON error shape of the app instead of gunicorn's HTML page.

gunicorn has no hook for those answers: ``Worker.handle_error`` picks the status and message
and hands them to ``gunicorn.util.write_error``, which this worker replaces in its own
process with a writer of the same signature.
"""
from __future__ import annotations

import json

from gunicorn import util
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


class GatewayWorker(ThreadWorker):
    def init_process(self) -> None:
        util.write_error = write_json_error
        super().init_process()
