"""The servers under test and the suite's own DIMSE peer, each recording its evidence.

- :class:`DicomWebTarget`: a DICOMweb base URL (any server), an optional bearer token sent
  on every request, and a log of every exchange (request, status, headers, body excerpt) so
  that a failed check can show what was asked and what came back.
- :class:`DimseTarget`: a DIMSE peer (``AET@HOST:PORT``) reached with pynetdicom as the
  suite's calling AE title, with TCP_NODELAY on the suite's sockets.
- :class:`StorageSCP`: the suite's own small storage SCP, the C-MOVE destination.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator
from urllib.parse import quote, urljoin

import requests

logger = logging.getLogger(__name__)

_TEXT_TYPES = ("json", "text", "xml", "html")
# Headers worth showing in evidence (everything else is noise for a conformance reader).
_SHOWN_RESPONSE_HEADERS = ("content-type", "content-length", "transfer-encoding", "warning", "location",
                           "content-location", "access-control-allow-origin", "access-control-allow-headers",
                           "access-control-allow-methods", "access-control-expose-headers", "retry-after",
                           "content-encoding")


class Recorder:
    """Evidence lines of the check that is running (thread-safe: a check may use threads)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, *lines: str) -> None:
        with self._lock:
            self._lines.extend(lines)

    def take(self) -> list[str]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines


# --- URL helpers ------------------------------------------------------------------------

def encode_uri_component(value: str) -> str:
    """JavaScript's encodeURIComponent: what browsers (OHIF) send; ``*`` stays literal."""
    return quote(value, safe="-_.!~*'()")


def encode_python(value: str) -> str:
    """What ``requests``/``urllib.parse.urlencode`` (dicomweb-client) send: ``*`` becomes ``%2A``."""
    return quote(value, safe="")


def encode_literal(value: str) -> str:
    """Reserved characters RFC 3986 allows in a query (``* ? , :``) sent as they are."""
    return quote(value, safe="-_.!~*'()?,:/@")


def query_string(pairs: Iterable[tuple[str, str]], encoder=encode_uri_component) -> str:
    return "&".join(f"{encoder(k)}={encoder(v)}" for k, v in pairs)


# --- DICOMweb -----------------------------------------------------------------------------

def _excerpt(response: requests.Response, limit: int = 600) -> str:
    ctype = response.headers.get("Content-Type", "")
    body = response.content
    if not body:
        return "(empty body)"
    if ctype.startswith("multipart/"):
        boundary = ctype.split("boundary=")[-1].split(";")[0].strip().strip('"') if "boundary=" in ctype else ""
        count = body.count(b"--" + boundary.encode()) - 1 if boundary else "?"
        return f"({len(body)} bytes, multipart with {count} part(s))"
    if any(t in ctype for t in _TEXT_TYPES) or (body.lstrip()[:1] in (b"{", b"[") and len(body) < 1 << 20):
        text = body.decode("utf-8", "replace")
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(text), separators=(",", ":"))  # one line, whatever the server's layout
        return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    return f"({len(body)} bytes of {ctype or 'unknown type'})"


class DicomWebTarget:
    """A DICOMweb server, e.g. ``http://127.0.0.1:8042/dicom-web``."""

    def __init__(self, base_url: str, *, token: str | None = None, recorder: Recorder | None = None,
                 timeout: float = 120.0):
        self.base = base_url.rstrip("/")
        self.token = token
        self.recorder = recorder or Recorder()
        self.timeout = timeout
        self._local = threading.local()
        self.requests = 0

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return self.base + ("" if path.startswith("/") or not path else "/") + path

    def resolve(self, uri: str, against: str) -> str:
        """A (possibly relative) URI as a client resolves it against ``against`` (RFC 3986 5.2)."""
        return urljoin(self.url(against).rstrip("/") + "/", uri)

    def request(self, method: str, path: str, *, query: str | None = None, headers: dict[str, str] | None = None,
                data: Any = None, auth: bool = True, note: str = "") -> requests.Response:
        """One HTTP exchange, recorded as evidence. ``query`` is an already-encoded query string
        (so the suite controls the exact bytes, e.g. ``%2A`` or a literal ``*``)."""
        url = self.url(path)
        if query:
            url += ("&" if "?" in url else "?") + query
        sent = dict(headers or {})
        if auth and self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        started = time.perf_counter()
        try:
            response = self.session.request(method, url, headers=sent, data=data, timeout=self.timeout,
                                            allow_redirects=False)
            _ = response.content
        except requests.RequestException as exc:
            self._record(method, url, sent, None, note, error=str(exc))
            raise
        finally:
            self.requests += 1
        self._record(method, url, sent, response, note, seconds=time.perf_counter() - started)
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def _record(self, method: str, url: str, headers: dict[str, str], response: requests.Response | None,
                note: str, error: str = "", seconds: float = 0.0) -> None:
        lines = [f"{method} {url}" + (f"   # {note}" if note else "")]
        for name, value in headers.items():
            if name.lower() == "authorization":
                value = value.split(" ")[0] + " ***"
            lines.append(f"  {name}: {value}")
        if response is None:
            lines.append(f"  -> no response: {error}")
        else:
            lines.append(f"  -> {response.status_code} {response.reason} ({seconds * 1000:.0f} ms)")
            for name in _SHOWN_RESPONSE_HEADERS:
                if name in response.headers:
                    lines.append(f"     {name}: {response.headers[name]}")
            lines.append("     body: " + _excerpt(response))
        self.recorder.add(*lines)

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()


# --- DIMSE --------------------------------------------------------------------------------

def parse_ae_address(text: str, default_port: int | None = None) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` → (AET, HOST, PORT)."""
    ae, at, address = text.rpartition("@")
    if not at or not ae:
        raise ValueError(f"{text!r}: expected AET@HOST:PORT")
    host, colon, port = address.rpartition(":")
    if not colon:
        if default_port is None:
            raise ValueError(f"{text!r}: expected AET@HOST:PORT")
        host, port = address, str(default_port)
    if not port.isdigit():
        raise ValueError(f"{text!r}: the port must be a number")
    return ae, host or "127.0.0.1", int(port)


def _nodelay(event) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def status_text(status) -> str:
    """A response status data set as ``0xFF00`` (and its Error Comment)."""
    if status is None or "Status" not in status:
        return "no response (association aborted or timed out)"
    text = f"0x{int(status.Status):04X}"
    comment = status.get("ErrorComment")
    return text + (f" ({comment})" if comment else "")


@dataclass
class DimseTarget:
    """A DIMSE peer: its AE title and address, and the suite's calling AE title."""

    ae_title: str
    host: str
    port: int
    calling_aet: str = "CONFSUITE"
    recorder: Recorder = field(default_factory=Recorder)
    timeout: float = 60.0

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port} (calling AE {self.calling_aet})"

    def new_ae(self, calling_aet: str | None = None):
        from pynetdicom import AE

        ae = AE(ae_title=calling_aet or self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = 10
        ae.maximum_pdu_size = 0
        return ae

    @contextlib.contextmanager
    def association(self, contexts: list, *, calling_aet: str | None = None, ext_neg: list | None = None,
                    handlers: list | None = None) -> Iterator[Any]:
        """An established association; raises :class:`AssociationRefused` (with the reason) if
        the peer rejects or aborts it."""
        ae = self.new_ae(calling_aet)
        for cx in contexts:
            ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, ext_neg=ext_neg,
                             evt_handlers=[*(handlers or []), _evt_conn_open()])
        who = calling_aet or self.calling_aet
        if not assoc.is_established:
            why = _refusal(assoc)
            self.recorder.add(f"A-ASSOCIATE {who} -> {self.ae_title}@{self.host}:{self.port}: {why}")
            ae.shutdown()
            raise AssociationRefused(why)
        self.recorder.add(f"A-ASSOCIATE {who} -> {self.ae_title}@{self.host}:{self.port}: accepted "
                          f"({len(assoc.accepted_contexts)} of {len(contexts)} context(s))")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def note(self, *lines: str) -> None:
        self.recorder.add(*lines)


def _evt_conn_open():
    from pynetdicom import evt

    return (evt.EVT_CONN_OPEN, _nodelay)


class AssociationRefused(RuntimeError):
    pass


def _refusal(assoc) -> str:
    if assoc.is_rejected:
        rsp = getattr(assoc.acceptor, "primitive", None)
        result = getattr(rsp, "result", None) if rsp is not None else None
        source = getattr(rsp, "result_source", None) if rsp is not None else None
        reason = getattr(rsp, "diagnostic", None) if rsp is not None else None
        text = {1: "rejected-permanent", 2: "rejected-transient"}.get(result, f"rejected ({result})")
        sources = {1: "service-user", 2: "service-provider (ACSE)", 3: "service-provider (presentation)"}
        reasons = {(1, 1): "no reason given", (1, 2): "application context name not supported",
                   (1, 3): "calling AE title not recognised", (1, 7): "called AE title not recognised",
                   (2, 1): "no reason given", (2, 2): "protocol version not supported",
                   (3, 1): "temporary congestion", (3, 2): "local limit exceeded"}
        return (f"association {text}, source {sources.get(source, source)}, "
                f"reason: {reasons.get((source, reason), reason)} (PS3.8 Table 9-21)")
    if assoc.is_aborted:
        return "association aborted by the peer"
    return "no association (connection refused or timed out)"


class StorageSCP:
    """The suite's own storage SCP (the C-MOVE destination): records what it receives."""

    def __init__(self, ae_title: str, host: str, port: int):
        self.ae_title, self.host, self.port = ae_title, host, port
        self.received: list[tuple[str, str, str]] = []  # (SOP Instance UID, SOP Class UID, transfer syntax)
        self.datasets: dict[str, bytes] = {}
        self._server = None
        self._ae = None
        self._lock = threading.Lock()

    def start(self) -> "StorageSCP":
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification
        from pydicom.uid import AllTransferSyntaxes

        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ts for ts in AllTransferSyntaxes])
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, _nodelay)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self._ae = ae
        return self

    def _on_store(self, event) -> int:
        request = event.request
        sop = str(request.AffectedSOPInstanceUID)
        data = event.request.DataSet.getvalue() if hasattr(event.request.DataSet, "getvalue") else b""
        with self._lock:
            self.received.append((sop, str(request.AffectedSOPClassUID), str(event.context.transfer_syntax)))
            self.datasets[sop] = data
        return 0x0000

    def take(self) -> list[tuple[str, str, str]]:
        with self._lock:
            got, self.received = self.received, []
        return got

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["AssociationRefused", "DicomWebTarget", "DimseTarget", "Recorder", "StorageSCP", "encode_python",
           "encode_uri_component", "free_port", "parse_ae_address", "query_string", "status_text"]
