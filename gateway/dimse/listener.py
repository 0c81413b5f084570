"""The DIMSE listener: a pynetdicom Application Entity on the gateway's core.

Verification SCP; Storage SCP for every storage SOP class pynetdicom knows, in every
transfer syntax pydicom knows (when a peer proposes several in one context, its first
choice is taken: see :func:`gateway.dimse.handlers.handle_requested`); Query/Retrieve SCP,
Patient Root and Study Root, FIND, MOVE and GET. Sockets get TCP_NODELAY, the PDU size we receive is unlimited by
default (``dimse.max_pdu_size = 0``).

``gateway dimse`` runs :func:`run` (listener and job worker) until SIGTERM/SIGINT;
``gateway serve`` starts it as a child process when ``dimse.enabled`` is true, and ``gateway
worker`` runs the job worker alone.
"""
from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import Callable

import pydicom.config
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom import sop_class as sc
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from gateway.dimse.handlers import DimseContext, handlers
from gateway.dimse.peers import PeerTable
from gateway.dimse.scu import TRANSFER_SYNTAXES, UNCOMPRESSED, configure_pynetdicom
from gateway.dimse.supervisor import READY, STOPPED
from gateway.services import Services
from gateway.worker import JobWorker

logger = logging.getLogger(__name__)

QUERY_RETRIEVE = (
    sc.PatientRootQueryRetrieveInformationModelFind,
    sc.PatientRootQueryRetrieveInformationModelMove,
    sc.PatientRootQueryRetrieveInformationModelGet,
    sc.StudyRootQueryRetrieveInformationModelFind,
    sc.StudyRootQueryRetrieveInformationModelMove,
    sc.StudyRootQueryRetrieveInformationModelGet,
)


def build_ae(settings) -> AE:
    """The Application Entity with the gateway's contexts and the ``dimse.*`` limits."""
    configure_pynetdicom()
    ae = AE(ae_title=settings["dimse.ae_title"])
    ae.maximum_associations = settings["dimse.max_associations"]
    ae.maximum_pdu_size = settings["dimse.max_pdu_size"]
    ae.acse_timeout = settings["dimse.acse_timeout"]
    ae.dimse_timeout = settings["dimse.dimse_timeout"]
    ae.network_timeout = settings["dimse.network_timeout"]
    ae.connection_timeout = settings["dimse.connection_timeout"]
    ae.require_called_aet = settings["dimse.check_called_ae"]
    ae.add_supported_context(sc.Verification)
    for context in AllStoragePresentationContexts:
        # Both roles: storage SCP for C-STORE, storage SCU for C-GET's sub-operations.
        ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES), scu_role=True, scp_role=True)
    for uid in QUERY_RETRIEVE:
        ae.add_supported_context(uid, list(UNCOMPRESSED))
    return ae


class SharedPortServer(ThreadedAssociationServer):
    """The association server of one of ``dimse.listeners`` processes on one port:
    SO_REUSEPORT, set before the bind, lets each bind it and the kernel spread new
    connections over them (only processes of the same user may join)."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class Listener:
    """The listener on its own threads: ``start()``, ``address``, ``stop()``."""

    def __init__(self, settings, services, *, peers: PeerTable | None = None):
        self.settings = settings
        self.services = services
        self.peers = peers or PeerTable.from_settings(settings)
        self.context = DimseContext(services, self.peers, ae_title=settings["dimse.ae_title"],
                                    find_max_results=settings["dimse.find_max_results"],
                                    workers=min(settings["dimse.max_associations"], 32))
        self.ae = build_ae(settings)
        self.server = None

    def start(self) -> "Listener":
        address = (self.settings["dimse.host"], self.settings["dimse.port"])
        shared = self.settings["dimse.listeners"] > 1
        if shared and not address[1]:
            raise OSError(errno.EINVAL, "dimse.listeners > 1 needs a fixed dimse.port (port 0 gives each its own)")
        # AE.start_server(block=False) with a server class of our own: what it does, but
        # make_server takes the class and start_server does not.
        self.server = self.ae.make_server(address, evt_handlers=handlers(self.context),
                                          server_class=SharedPortServer if shared else ThreadedAssociationServer)
        threading.Thread(target=make_target(self.server.serve_forever), name="dimse-acceptor", daemon=True).start()
        self.ae._servers.append(self.server)  # as start_server does: the server's shutdown removes it
        logger.info("DIMSE listener %s on %s:%d (%d peer(s), %d destination(s))", self.settings["dimse.ae_title"],
                    *self.address, len(self.peers.peers), len(self.peers.destinations))
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()
        self.context.close()


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            logger.warning("the parent process %d is gone: stopping", parent_pid)
            stop.set()


def run(settings, *, listen: bool = True, work: bool = True, kinds: list[str] | None = None,
        parent_pid: int | None = None, announce: Callable[[str], None] = print) -> int:
    """Run the listener and/or the job worker (of every kind, or of ``kinds``) until
    SIGTERM/SIGINT (or the parent dies).

    Returns the process exit code: 0 after a clean stop, 3 when the port cannot be bound.
    """
    services = Services.build(settings)
    # pynetdicom encodes every DIMSE command set with pydicom; its writing validation (a regex
    # per value) costs about 1 ms per message and checks values pynetdicom built itself. This
    # process writes nothing else with pydicom (received data sets are stored unparsed).
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    # pynetdicom spools received data sets with tempfile: keep them beside the blob store's
    # staging folder (on disk, same file system) rather than in a RAM-backed /tmp.
    staging = services.blobs.staging_dir()
    staging.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(staging)

    worker = JobWorker.for_services(services, kinds=kinds) if work else None
    if worker is not None and not worker.handlers:
        worker = None
    # What this process built lives as long as it does: out of the way of full collections
    # (they walked it all and paused every association thread and job for tens of ms).
    gc.collect()
    gc.freeze()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if parent_pid:
        threading.Thread(target=_watch_parent, args=(parent_pid, stop), daemon=True).start()

    listener = None
    try:
        if listen:
            try:
                listener = Listener(settings, services).start()
            except OSError as exc:
                logger.error("DIMSE listener cannot listen on %s:%s: %s", settings["dimse.host"],
                             settings["dimse.port"], exc.strerror or exc)
                return 3
        if worker is not None:
            worker.start()
        parts = []
        if listener is not None:
            host, port = listener.address
            parts.append(f"AE {settings['dimse.ae_title']} on {host}:{port}")
        if worker is not None:
            parts.append(f"job worker for {', '.join(worker.kinds)}")
        announce(f"{READY} {'; '.join(parts) or 'nothing to do'}")
        sys.stdout.flush()
        stop.wait()
    finally:
        if worker is not None:
            worker.stop()
        if listener is not None:
            listener.stop()
        services.close()
    announce(STOPPED)
    sys.stdout.flush()
    return 0
