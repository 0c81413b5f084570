"""DIMSE handlers: translate C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET to the core and back.

Bound to the listener's events as ``(evt.EVT_C_STORE, handle_store, [context])``. Each
handler checks what the calling peer may do (:mod:`gateway.dimse.peers`), runs the core
service as the peer's principal, and answers with the status the core's
:class:`~gateway.errors.GatewayError` names, never pynetdicom's generic 0xC2xx/0xCx11
when the cause is known.

Core calls run on a small thread pool of the listener rather than on pynetdicom's
thread-per-association, so stores that keep per-thread connections (SQLite) keep a
bounded number of them.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import logging
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Iterator

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import evt
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import build_context

from auth.audit import DENIED, audit_context
from auth.base import Principal
from gateway import metrics
from gateway.dimse import identifiers
from gateway.dimse.peers import Peer, PeerTable
from gateway.dimse.scu import StoredInstance, on_conn_open, store_contexts
from gateway.errors import BadRequest, GatewayError, NotAuthorized

logger = logging.getLogger(__name__)

# The gateway's Implementation Class UID in the file meta of what it receives (PS3.10 7.1):
# fixed forever, so the same data set received twice makes the same bytes (a duplicate).
IMPLEMENTATION_CLASS_UID = "2.25.176735671218530238405960628333121223427"
_CHUNK = 1024 * 1024
MOVE_MODELS = (sc.PatientRootQueryRetrieveInformationModelMove, sc.StudyRootQueryRetrieveInformationModelMove)
_ERROR_COMMENT_MAX = 64  # LO


_ASSOCIATION_IDS = itertools.count(1)


@dataclass
class AssociationState:
    peer: Peer
    calling_ae: str
    address: str
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=dict)
    # The audit log's request id of everything this association does.
    request_id: str = field(default_factory=lambda: f"dimse-{os.getpid()}-{next(_ASSOCIATION_IDS)}")

    @property
    def principal(self) -> Principal:
        return self.peer.principal(self.calling_ae)

    @property
    def client(self) -> str:
        return f"{self.calling_ae}@{self.address}"

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


class DimseContext:
    """What the handlers share: the core services, the peer table, a pool for core calls,
    and the state of each association."""

    def __init__(self, services, peers: PeerTable, *, ae_title: str, find_max_results: int = 0,
                 workers: int = 8):
        self.services = services
        self.peers = peers
        self.ae_title = ae_title
        self.find_max_results = find_max_results
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dimse-core")
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def run(self, func, *args, **kwargs):
        """Run a core call on the pool and wait for it (exceptions propagate)."""
        return self.pool.submit(contextvars.copy_context().run, func, *args, **kwargs).result()

    def run_for(self, state: "AssociationState", func, *args, **kwargs):
        """:meth:`run` with the association's audit context (client, door, request id)."""
        def call():
            with audit_context(client=state.client, door="dimse", request_id=state.request_id):
                return func(*args, **kwargs)

        return self.run(call)

    def audit(self, state: "AssociationState | None", action: str, outcome: str, *, detail: str,
              calling_ae: str = "", address: str = "") -> None:
        """Record a refusal at the DIMSE door (no core call was made)."""
        audit = getattr(self.services, "audit", None)
        if audit is None:
            return
        client = state.client if state else f"{calling_ae}@{address}"
        with audit_context(client=client, door="dimse", request_id=state.request_id if state else None):
            audit.record(action, outcome, principal=state.principal if state else None, resource=action,
                         detail=detail)

    def bind(self, assoc, state: AssociationState) -> None:
        self._states[assoc] = state

    def state(self, assoc) -> AssociationState | None:
        return self._states.get(assoc)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --- statuses --------------------------------------------------------------------------
def status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:_ERROR_COMMENT_MAX]
    return ds


def _failure(exc: GatewayError, *, retrieve: bool = False) -> Dataset:
    code = exc.dimse_status
    if retrieve and code == 0xA700:  # C-MOVE/C-GET: out of resources, unable to calculate matches
        code = 0xA701
    return status(code, exc.message)


def _refused(state: AssociationState | None, service: str, ctx: "DimseContext | None" = None) -> Dataset:
    who = state.calling_ae if state else "?"
    logger.warning("calling AE %s may not %s (dimse.peers allow = %s)", who, service,
                   ", ".join(sorted(state.peer.allow)) if state else "-")
    if ctx is not None:
        ctx.audit(state, service, DENIED, detail=f"C-{service.upper()} not in the peer's allow list")
    return status(0x0124, f"{who} is not allowed to {service}")


# --- association events ----------------------------------------------------------------
def handle_requested(event: evt.Event, ctx: DimseContext) -> None:
    """EVT_REQUESTED: reject unknown peers (calling AE title not recognised); withhold the
    C-MOVE contexts from peers that may not move."""
    assoc = event.assoc
    calling = str(assoc.requestor.primitive.calling_ae_title).strip()
    address = str(assoc.requestor.address)
    peer = ctx.peers.match(calling, address)
    if peer is None:
        why = ctx.peers.why_rejected(calling, address)
        logger.warning("association rejected: %s", why)
        ctx.audit(None, "login", DENIED, detail=f"association rejected: {why}", calling_ae=calling, address=address)
        assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()
        return
    ctx.bind(assoc, AssociationState(peer, calling, address))
    assoc.acceptor.supported_contexts = _contexts_for(assoc, peer)
    logger.info("association from %s (%s) for clinic %s", calling, address, peer.clinic)


def _contexts_for(assoc, peer: Peer) -> list:
    """This association's supported contexts: the peer's own order of transfer syntaxes where it
    proposed several in one context (the gateway stores what the peer prefers to send, and
    sends C-GET sub-operations as the peer prefers to receive); without the C-MOVE models when
    the peer may not move (pynetdicom's C-MOVE SCP can answer nothing but 0xA801 before it has
    associated with the destination, so the peer is told at negotiation instead)."""
    proposed: dict[str, list[str]] = {}
    for cx in assoc.requestor.primitive.presentation_context_definition_list:
        order = proposed.setdefault(str(cx.abstract_syntax), [])
        order.extend(ts for ts in cx.transfer_syntax if ts not in order)
    contexts = []
    for cx in assoc.acceptor.supported_contexts:
        if cx.abstract_syntax in MOVE_MODELS and not peer.allows("move"):
            continue
        order = proposed.get(str(cx.abstract_syntax))
        if order and len(order) > 1:
            ours = cx.transfer_syntax
            wanted = next((ts for ts in order if ts in ours), None)
            picked = next((ts for ts in ours if ts in order), None)
            if wanted != picked:  # rare: the setter validates every UID again
                cx.transfer_syntax = [wanted] + [ts for ts in ours if ts != wanted]
        contexts.append(cx)
    return contexts


def handle_conn_close(event: evt.Event, ctx: DimseContext) -> None:
    """EVT_CONN_CLOSE: log what the association did; remove a C-STORE data set that was
    being received when the connection went away (pynetdicom leaves it behind)."""
    assoc = event.assoc
    message = getattr(assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        with contextlib.suppress(OSError):
            partial.close()
            os.unlink(partial.name)
        logger.warning("connection closed during a C-STORE: the partly received data set was discarded")
    state = ctx.state(assoc)
    if state is not None:
        done = ", ".join(f"{n} {what}" for what, n in sorted(state.counts.items())) or "nothing"
        how = "aborted" if assoc.is_aborted else "released" if assoc.is_released else "closed"
        logger.info("association from %s (%s) %s after %.1f s: %s", state.calling_ae, state.address, how,
                    time.monotonic() - state.started, done)


# --- C-ECHO ----------------------------------------------------------------------------
def handle_echo(event: evt.Event, ctx: DimseContext) -> Dataset | int:
    state = ctx.state(event.assoc)
    if state is None or not state.peer.allows("echo"):
        return _refused(state, "echo", ctx)
    return 0x0000


# --- C-STORE ---------------------------------------------------------------------------
def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the file meta group the gateway writes before a received data set."""
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0  # computed by write_file_meta_info
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    # Not enforce_standard: pydicom would add its own (version-dependent) Implementation
    # Version Name, and a pydicom upgrade would then turn re-sent instances into conflicts.
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue()


def received_part10(event: evt.Event) -> Iterator[bytes]:
    """The received instance as a DICOM Part 10 file, in chunks.

    "As received" means: a 128-byte zero preamble, ``DICM``, a file meta group built from
    the C-STORE request (Media Storage SOP Class/Instance UID = the request's Affected SOP
    Class/Instance UID, Transfer Syntax UID = the presentation context's, the gateway's
    fixed Implementation Class UID), then the data set bytes exactly as they arrived in the
    P-DATA fragments: not decoded, not re-encoded (a deflated data set stays deflated).
    pynetdicom spools them to a file as they arrive (``STORE_RECV_CHUNKED_DATASET``); only
    its own file meta is skipped. The same instance retrieved by WADO-RS with
    ``transfer-syntax=*``, C-GET or C-MOVE is these bytes.
    """
    request = event.request
    yield file_meta_bytes(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                          str(event.context.transfer_syntax))
    path = getattr(request, "_dataset_path", None)
    if path is None:  # STORE_RECV_CHUNKED_DATASET off (an embedding application's choice)
        yield request.DataSet.getvalue()
        return
    _meta, offset = split_dataset(path)
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(_CHUNK):
            yield chunk


def _ingest(services, source, principal: Principal):
    ingest = services.ingest
    return ingest.commit(ingest.stage(source), principal=principal)


def handle_store(event: evt.Event, ctx: DimseContext) -> Dataset | int:
    state = ctx.state(event.assoc)
    if state is None or not state.peer.allows("store"):
        return _refused(state, "store", ctx)
    sop_uid = str(event.request.AffectedSOPInstanceUID)
    try:
        outcome = ctx.run_for(state, _ingest, ctx.services, received_part10(event), state.principal)
    except GatewayError as exc:
        state.count("failed")
        return _failure(exc)
    except OSError as exc:  # our spool could not be read or written
        logger.exception("C-STORE of %s from %s: spool failed", sop_uid, state.calling_ae)
        state.count("failed")
        return status(0xA700, f"out of resources: {exc.strerror or exc}")
    except Exception as exc:  # a bug: say so, with the class, rather than pynetdicom's 0xC211
        logger.exception("C-STORE of %s from %s failed", sop_uid, state.calling_ae)
        state.count("failed")
        return status(0x0110, f"processing failure: {type(exc).__name__}")
    if not outcome.ok:
        state.count("failed")
        logger.warning("C-STORE of %s from %s refused (0x%04X): %s", sop_uid, state.calling_ae,
                       outcome.error.dimse_status, outcome.error.message)
        return _failure(outcome.error)
    state.count(outcome.status)
    logger.debug("C-STORE of %s from %s: %s", sop_uid, state.calling_ae, outcome.status)
    return 0x0000


# --- C-FIND ----------------------------------------------------------------------------
def _model(event: evt.Event) -> str:
    return identifiers.MODELS[str(event.request.AffectedSOPClassUID)]


def handle_find(event: evt.Event, ctx: DimseContext) -> Iterator[tuple[Any, Dataset | None]]:
    state = ctx.state(event.assoc)
    if state is None or not state.peer.allows("find"):
        yield _refused(state, "find", ctx), None
        return
    try:
        request = identifiers.parse(event.identifier, _model(event))
    except GatewayError as exc:
        yield _failure(exc), None
        return
    except Exception as exc:  # the identifier could not even be decoded
        yield status(0xC000, f"identifier cannot be decoded: {exc}"), None
        return

    def search(*args, **kwargs):
        return ctx.run_for(state, ctx.services.query.search, *args, **kwargs)

    sent = 0
    limit = ctx.find_max_results
    try:
        for page in identifiers.search_pages(search, state.principal, request.level, request.filters,
                                             include=request.include):
            # 0xFF01: matches continue, but some optional keys were not matched on.
            pending = 0xFF01 if page.ignored else 0xFF00
            for result in page.results:
                if event.is_cancelled:
                    state.count("find cancelled")
                    yield 0xFE00, None
                    return
                yield pending, identifiers.response(request, result, ae_title=ctx.ae_title)
                sent += 1
                if limit and sent >= limit:
                    logger.warning("C-FIND from %s stopped at dimse.find_max_results=%d matches",
                                   state.calling_ae, limit)
                    return
    except GatewayError as exc:
        yield _failure(exc), None
        return
    finally:
        state.count("matches", sent)


# --- C-MOVE and C-GET ------------------------------------------------------------------
def _records(event: evt.Event, ctx: DimseContext, state: AssociationState):
    request = identifiers.parse(event.identifier, _model(event))
    return ctx.run_for(state, identifiers.retrieve_records, ctx.services, state.principal, request)


def _sub_operations(event: evt.Event, ctx: DimseContext, state: AssociationState, records: list,
                    what: str) -> Iterator[tuple[int, Dataset | None]]:
    for record in records:
        if event.is_cancelled:
            state.count(f"{what} cancelled")
            yield 0xFE00, None
            return
        state.count(what)
        yield 0xFF00, StoredInstance(record, ctx.services.transcode)


def handle_move(event: evt.Event, ctx: DimseContext):
    state = ctx.state(event.assoc)
    if state is None or not state.peer.allows("move"):  # withheld at negotiation; defensive
        raise NotAuthorized("C-MOVE is not allowed for this peer")
    name = str(event.move_destination).strip()
    destination = ctx.peers.destination(name)
    if destination is None:
        logger.warning("C-MOVE from %s to unknown destination %r (declare it in dimse.destinations)",
                       state.calling_ae, name)
        yield None, None  # 0xA801 Move Destination unknown
        return
    error: GatewayError | None = None
    records: list = []
    try:
        records = _records(event, ctx, state)
    except GatewayError as exc:
        error = exc
    except Exception as exc:
        error = BadRequest(f"identifier cannot be decoded: {exc}")
    yield destination.host, destination.port, {
        "contexts": store_contexts(records) if records else [build_context(sc.Verification)],
        "evt_handlers": [(evt.EVT_CONN_OPEN, on_conn_open)],
    }
    if error is not None:
        # pynetdicom associates with the destination before it can send a failure status.
        yield 1
        yield _failure(error, retrieve=True), None
        return
    logger.info("C-MOVE from %s: %d instance(s) to %s (%s:%d)", state.calling_ae, len(records), name,
                destination.host, destination.port)
    yield len(records)
    yield from _sub_operations(event, ctx, state, records, "moved")


def handle_get(event: evt.Event, ctx: DimseContext):
    state = ctx.state(event.assoc)
    if state is None or not state.peer.allows("get"):
        yield 1
        yield _refused(state, "get", ctx), None
        return
    try:
        records = _records(event, ctx, state)
    except GatewayError as exc:
        yield 1
        yield _failure(exc, retrieve=True), None
        return
    except Exception as exc:
        yield 1
        yield status(0xC000, f"identifier cannot be decoded: {exc}"), None
        return
    logger.info("C-GET from %s: %d instance(s)", state.calling_ae, len(records))
    yield len(records)
    yield from _sub_operations(event, ctx, state, records, "sent")


# --- metrics ---------------------------------------------------------------------------
def _association_ended_up(outcome: str):
    def count(event: evt.Event) -> None:
        metrics.DIMSE_ASSOCIATIONS.labels(outcome).inc()
    return count


def _count_status(operation: str, status) -> None:
    code = status.Status if isinstance(status, Dataset) else status
    metrics.DIMSE_RESPONSES.labels(operation, f"0x{int(code):04X}").inc()


def _counted(operation: str, handler):
    """``handler`` with every status it answers counted (C-FIND's pending matches included,
    0xFF00). Counted here rather than on EVT_DIMSE_SENT, whose handler runs on the thread that
    also has to notice a C-CANCEL in time."""
    if inspect.isgeneratorfunction(handler):
        def statuses(event, ctx):
            for item in handler(event, ctx):
                # (status, identifier) pairs; C-MOVE's destination and C-GET's count are not
                if isinstance(item, tuple) and isinstance(item[0], (int, Dataset)):
                    _count_status(operation, item[0])
                yield item
        return statuses

    def status_of(event, ctx):
        result = handler(event, ctx)
        _count_status(operation, result)
        return result
    return status_of


def handlers(ctx: DimseContext) -> list[tuple]:
    """The listener's event bindings."""
    return [
        (evt.EVT_ACCEPTED, _association_ended_up("accepted")),
        (evt.EVT_REJECTED, _association_ended_up("rejected")),
        (evt.EVT_ABORTED, _association_ended_up("aborted")),
        (evt.EVT_CONN_OPEN, on_conn_open),
        (evt.EVT_REQUESTED, handle_requested, [ctx]),
        (evt.EVT_CONN_CLOSE, handle_conn_close, [ctx]),
        (evt.EVT_C_ECHO, _counted("C-ECHO", handle_echo), [ctx]),
        (evt.EVT_C_STORE, _counted("C-STORE", handle_store), [ctx]),
        (evt.EVT_C_FIND, _counted("C-FIND", handle_find), [ctx]),
        (evt.EVT_C_MOVE, _counted("C-MOVE", handle_move), [ctx]),
        (evt.EVT_C_GET, _counted("C-GET", handle_get), [ctx]),
    ]
