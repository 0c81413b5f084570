"""The audit log: who did what to which resource, from where, with which request id.

Records go to the audit log store (:class:`storage.base.AuditLog`: the index database's
append-only ``audit_log`` table, which refuses updates and deletes) and, as JSON, to the ``gateway.audit`` logger, for shipping to a
SIEM. Recorded: stores, reads, searches, deletes, shares, revocations, signed URLs, admin
actions, failed logins and every refused access (403, and the 404 a principal gets for a
study of another clinic, with the owning clinic noted for the security officer, never
for the caller).

A successful read or store of one study by one principal is recorded once per
``audit.read_window`` seconds per process (a viewer fetching 500 frames makes one record,
not 500); refusals are always recorded.

The request id, client address and front door come from context variables that each
door sets (:func:`audit_context`).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Iterator

from auth.base import Principal
from gateway.errors import BackendUnavailable
from gateway.logs import request_id_var
from storage.errors import StorageError
from storage.records import AuditQuery, AuditRecord

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("gateway.audit")

client_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_client", default=None)
door_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_door", default=None)

OK, DENIED, NOT_FOUND, FAILED = "ok", "denied", "not_found", "failed"
_DEDUPED_ACTIONS = frozenset({"read", "store", "search"})
_RELAXED_ACTIONS = frozenset({"read", "search"})
_DEDUPE_SIZE = 10_000


@contextlib.contextmanager
def audit_context(*, client: str | None, door: str, request_id: str | None = None) -> Iterator[None]:
    """Set the client address, door (and request id) of the records made inside."""
    tokens = [client_var.set(client), door_var.set(door)]
    rid_token = request_id_var.set(request_id) if request_id else None
    try:
        yield
    finally:
        door_var.reset(tokens[1])
        client_var.reset(tokens[0])
        if rid_token is not None:
            request_id_var.reset(rid_token)


def resource_name(study: str | None = None, series: str | None = None, sop: str | None = None) -> str:
    parts = [f"study:{study}"] if study else []
    if series:
        parts.append(f"series:{series}")
    if sop:
        parts.append(f"instance:{sop}")
    return "/".join(parts)


def record_json(record: AuditRecord) -> dict:
    body = asdict(record)
    body["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.at / 1000)) + f".{record.at % 1000:03d}Z"
    return body


class AuditService:
    def __init__(self, log, *, read_window: int = 300, durable_reads: bool = False, clock=time.time):
        self.log = log
        self.read_window = read_window
        self.durable_reads = durable_reads
        self.clock = clock
        self._recent: OrderedDict[tuple, float] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, log, settings) -> "AuditService":
        return cls(log, read_window=settings["audit.read_window"], durable_reads=settings["audit.durable_reads"])

    def _seen_recently(self, key: tuple, now: float) -> bool:
        with self._lock:
            last = self._recent.get(key)
            if last is not None and now - last < self.read_window:
                return True
            self._recent[key] = now
            self._recent.move_to_end(key)
            while len(self._recent) > _DEDUPE_SIZE:
                self._recent.popitem(last=False)
            return False

    def record(self, action: str, outcome: str, *, principal: Principal | None = None, resource: str = "",
               resource_clinic: str | None = None, detail: str | None = None) -> AuditRecord | None:
        """Append one record (or none: a repeated successful read/store/search inside the window)."""
        now = self.clock()
        if outcome == OK and action in ("search", "read") and principal is not None and principal.kind == "system":
            return None  # the gateway's own lookups (forwarding rules, migrations) are not accesses
        if outcome == OK and action in _DEDUPED_ACTIONS and self.read_window:
            key = (principal and (principal.user_id, principal.clinic_id, principal.kind), action, resource,
                   resource_clinic, detail, client_var.get())
            if self._seen_recently(key, now):
                return None
        rid = request_id_var.get()
        record = AuditRecord(
            at=int(now * 1000), action=action, outcome=outcome,
            user_id=principal.user_id if principal else None, clinic_id=principal.clinic_id if principal else None,
            resource=resource, resource_clinic=resource_clinic, client=client_var.get(),
            request_id=None if rid == "-" else rid, door=door_var.get(), detail=(detail or None) and detail[:1000])
        fields = {k: v for k, v in asdict(record).items() if v is not None and k != "id"}
        # The record rides along: JSON logs nest it as an object, the text format appends it.
        audit_logger.info("audit %s %s %s", action, outcome, resource or "-", extra={"audit": fields})
        try:
            # A successful read or search (the bulk of the log, one per request) is not worth a
            # wait for the disk unless audit.durable_reads; changes and refusals always are.
            relaxed = not self.durable_reads and outcome == OK and action in _RELAXED_ACTIONS
            self.log.append([record], durable=not relaxed)
        except StorageError as exc:  # the access itself was decided; the log line above keeps the trace
            logger.error("audit record not stored (%s): %s %s %s", exc, action, outcome, resource)
        return record

    def _search(self, query: AuditQuery) -> list[AuditRecord]:
        try:
            return self.log.search(query)
        except StorageError as exc:
            raise BackendUnavailable(f"audit log unreachable: {exc}") from exc

    def search(self, query: AuditQuery) -> list[AuditRecord]:
        return self._search(query)

    def export(self, query: AuditQuery, *, page: int = 1000) -> Iterator[AuditRecord]:
        """Every matching record, oldest first, read in pages (for JSON-lines export)."""
        query.newest_first, query.offset = False, 0
        remaining = query.limit
        while remaining > 0:
            query.limit = min(page, remaining)
            rows = self._search(query)
            yield from rows
            if len(rows) < query.limit:
                return
            remaining -= len(rows)
            query.after_id = rows[-1].id
