"""Sending stored instances by C-STORE, as stored, in bounded memory.

Used by the C-GET and C-MOVE sub-operations and by the forward worker. An instance is
read through the retrieve service (the transcode service's) and its data set is sent byte for byte as it is stored
(pynetdicom's ``STORE_SEND_CHUNKED_DATASET``: the file is streamed in PDU-sized pieces
from the data set's offset) over a presentation context whose transfer syntax is the
stored one. Only when the peer accepted no such context does the instance get converted,
and that is logged: to Explicit (or Implicit) VR Little Endian by the transcoding service,
frame by frame into a temporary file that is then sent the same way (bounded memory);
to Deflated Explicit VR Little Endian in memory by pydicom and pynetdicom. A peer that
accepted only Big Endian gets nothing (pynetdicom cannot change the byte order).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian)
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext, build_context

from gateway.services.transcode import TranscodeService

if TYPE_CHECKING:
    from storage.records import InstanceRecord

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                ExplicitVRBigEndian)
_NOT_STORAGE = {"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95",  # JPIP referenced
                "1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K referenced
                "1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.7.2", "1.2.840.10008.1.2.7.3"}  # SMPTE 2110
# What the listener accepts, in order of preference when a peer proposes several in one
# context (as dcmtk's storescp: explicit little endian first), then every compressed one.
TRANSFER_SYNTAXES: tuple[UID, ...] = UNCOMPRESSED + tuple(
    ts for ts in AllTransferSyntaxes if ts not in UNCOMPRESSED and ts not in _NOT_STORAGE)


class NoAcceptedContext(RuntimeError):
    """The peer accepted no presentation context the instance can be sent over."""


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom policy of the gateway: received C-STORE data sets are
    written to a file as they arrive, and files are sent without being decoded."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: no Nagle delay on the association's socket (both sides).

    Without it every small DIMSE response waits for the peer's delayed ACK (~40-50 ms
    per instance with dcmtk, see TOOLING-NOTES).
    """
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StoredInstance(Dataset):
    """A sub-operation's instance as pynetdicom's C-GET/C-MOVE service sees it: a data set
    with only its SOP Class and Instance UIDs, which :func:`install_stored_sender` turns
    into a send of the stored bytes."""

    def __init__(self, record: "InstanceRecord", transcode: TranscodeService):
        super().__init__()
        self.SOPClassUID = record.sop_class_uid
        self.SOPInstanceUID = record.sop_uid
        self.gateway_record = record
        self.gateway_transcode = transcode


def install_stored_sender(assoc: Association) -> None:
    """Make ``assoc.send_c_store`` send a :class:`StoredInstance` from its stored bytes.

    pynetdicom's C-GET and C-MOVE SCPs call ``send_c_store(dataset, ...)`` with what the
    handler yields and accept only data sets; this per-association wrapper is how the
    stored file reaches the wire unchanged instead of being decoded and re-encoded.
    """
    original = assoc.send_c_store

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        if isinstance(dataset, StoredInstance):
            return send_stored(assoc, dataset.gateway_transcode, dataset.gateway_record, msg_id=msg_id,
                               priority=priority, originator_aet=originator_aet, originator_id=originator_id,
                               send=original)
        return original(dataset, msg_id, priority, originator_aet, originator_id)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]


def on_conn_open(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler of every gateway association: TCP_NODELAY and stored sends."""
    set_nodelay(event)
    install_stored_sender(event.assoc)


def store_contexts(records: Iterable["InstanceRecord"]) -> list[PresentationContext]:
    """Contexts to propose for sending ``records``: one per stored (SOP class, transfer
    syntax), then one per SOP class with the uncompressed syntaxes for conversions, at most
    128 in all (the conversion contexts are dropped first)."""
    pairs: dict[tuple[str, str], None] = {}
    for record in records:
        pairs.setdefault((record.sop_class_uid, record.transfer_syntax), None)
    exact = [build_context(sop_class, [ts]) for sop_class, ts in pairs]
    classes = list(dict.fromkeys(sop_class for sop_class, _ in pairs))
    fallback = [build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for sop_class in classes]
    if len(exact) > MAX_CONTEXTS:
        logger.warning("%d SOP class/transfer syntax pairs to send, only %d can be proposed on one association",
                       len(exact), MAX_CONTEXTS)
    return (exact + fallback)[:MAX_CONTEXTS]


def _context(assoc: Association, sop_class: str, transfer_syntaxes: Iterable[str]) -> PresentationContext | None:
    wanted = set(transfer_syntaxes)
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] in wanted and cx.as_scu:
            return cx
    return None


def _local_path(fh: Any) -> str | None:
    name = getattr(fh, "name", None)
    return name if isinstance(name, str) and os.path.isfile(name) else None


@contextlib.contextmanager
def _as_file(fh: Any) -> Iterator[str]:
    """A path of the stored bytes: the blob's own file, or a spooled copy (other backends)."""
    path = _local_path(fh)
    if path is not None:
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=".dcm") as spool:
        fh.seek(0)
        shutil.copyfileobj(fh, spool, 1024 * 1024)
        spool.flush()
        yield spool.name


def send_stored(assoc: Association, transcode: TranscodeService, record: "InstanceRecord", *,
                msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                originator_id: int | None = None, send=None) -> Dataset:
    """C-STORE one stored instance over ``assoc``; returns the response status data set
    (empty when the peer did not answer). Raises :class:`NoAcceptedContext`."""
    configure_pynetdicom()
    send = send or assoc.send_c_store
    kwargs = {"msg_id": msg_id, "priority": priority, "originator_aet": originator_aet,
              "originator_id": originator_id}
    with contextlib.closing(transcode.retrieve.open(record)) as fh:
        if _context(assoc, record.sop_class_uid, [record.transfer_syntax]) is not None:
            with _as_file(fh) as path:
                meta, _offset = split_dataset(path)
                if all(k in meta for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                                            "TransferSyntaxUID")):
                    return send(path, **kwargs)
        # No context for the stored syntax (or a file meta without Media Storage UIDs).
        native = (_context(assoc, record.sop_class_uid, [ExplicitVRLittleEndian])
                  or _context(assoc, record.sop_class_uid, [ImplicitVRLittleEndian]))
        if native is not None:
            target = str(native.transfer_syntax[0])
            with transcode.to_file(record, target) as path:
                logger.info("instance %s sent converted from %s to %s (the peer did not accept it as stored)",
                            record.sop_uid, UID(record.transfer_syntax).name, UID(target).name)
                return send(str(path), **kwargs)
        # Deflated: pynetdicom deflates an Explicit VR Little Endian data set itself, but only a
        # data set in memory (a file is sent as it is). It cannot change the byte order, so a
        # peer that accepted only Big Endian cannot be served.
        target = _context(assoc, record.sop_class_uid, [DeflatedExplicitVRLittleEndian])
        if target is None and _context(assoc, record.sop_class_uid, [record.transfer_syntax]) is None:
            raise NoAcceptedContext(
                f"{assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title} accepted no "
                f"presentation context for {UID(record.sop_class_uid).name} in "
                f"{UID(record.transfer_syntax).name} or an uncompressed little endian syntax")
        # Left in memory on purpose, both rare: a Deflated peer (above), or a peer that accepted
        # only the stored syntax for a file whose meta lacks its Media Storage UIDs (pynetdicom
        # then encodes the data set in that syntax). The whole data set is read.
        logger.warning("instance %s converted in memory (%s accepted, stored as %s): the whole data set is read",
                       record.sop_uid, UID(target.transfer_syntax[0]).name if target else "only the stored syntax",
                       UID(record.transfer_syntax).name)
        fh.seek(0)
        ds = pydicom.dcmread(fh)
        if target is not None and ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        return send(ds, **kwargs)
