"""Forwarding: every stored instance, from any front door, sent on to remote AEs by C-STORE.

Rules come from ``forward.rules``; destinations from ``dimse.destinations``::

    [[forward.rules]]
    name = "all-to-pacs"
    to = ["HOSPITAL_PACS"]         # destination AE titles
    clinic = ""                    # optional: only this clinic's instances
    modalities = ["CT", "PX"]      # optional: only these series modalities
    sop_classes = []               # optional: only these SOP classes

:class:`ForwardingPlugin` implements the ``instance_stored`` hook: in the process that
stored the instance, right after the store, it inserts one row per destination into the
forward queue of the index store (durable, shared by every process). A
:class:`ForwardWorker` claims due rows with a lease, sends each instance as stored over
one association per destination and batch, deletes what was delivered, and reschedules
failures with exponential backoff (``forward.retry_initial`` doubling up to
``forward.retry_max``) until ``forward.max_attempts``, after which the row is ``failed``
and waits for a retry from ``gateway forwards retry`` or the admin endpoint. A worker that
dies leaves its leases behind: a new worker on the same host releases those of dead
processes at start, others expire after ``forward.lease_seconds``. Delivery is at least
once: a crash between the remote's success and the row's deletion sends that instance
again, which a PACS treats as a duplicate.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from auth.base import Principal
from gateway.config import SettingsError
from gateway.dimse.peers import PeerTable
from gateway.errors import GatewayError
from plugins.hookspecs import hookimpl
from storage.base import ForwardItem

logger = logging.getLogger(__name__)

PLUGIN_NAME = "gateway.forwarding"
# Remote statuses that will not change by sending again (PS3.4 B.2.3, PS3.7 C).
_SUCCESS = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}
_PERMANENT_RANGES = ((0xA900, 0xA9FF), (0xC000, 0xCFFF))
_PERMANENT = {0x0111, 0x0117, 0x0122, 0x0124, 0x0210, 0x0211, 0x0212}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ForwardRule:
    name: str
    to: tuple[str, ...]
    clinic: str = ""
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()

    def matches(self, clinic: str, sop_class: str, modality: Callable[[], str | None]) -> bool:
        if self.clinic and clinic != self.clinic:
            return False
        if self.sop_classes and sop_class not in self.sop_classes:
            return False
        return not self.modalities or (modality() or "").upper() in self.modalities


def rules_from_settings(settings) -> list[ForwardRule]:
    """The forwarding rules; a rule naming an undeclared destination is a settings error."""
    declared = {d["ae_title"] for d in settings["dimse.destinations"]}
    rules = []
    for entry in settings["forward.rules"]:
        unknown = [ae for ae in entry["to"] if ae not in declared]
        if unknown:
            raise SettingsError(f"forwarding rule {entry['name']!r} sends to {unknown[0]!r}, which is not "
                                "declared in dimse.destinations (ae_title, host, port)")
        rules.append(ForwardRule(entry["name"], tuple(entry["to"]), entry.get("clinic", ""),
                                 frozenset(entry.get("modalities", ())), frozenset(entry.get("sop_classes", ()))))
    return rules


class ForwardingPlugin:
    """``instance_stored`` → one forward-queue row per matching destination."""

    def __init__(self, wake: Callable[[], None] | None = None):
        self.wake = wake
        self._rules: tuple[object, list[ForwardRule]] | None = None

    def rules(self, settings) -> list[ForwardRule]:
        if self._rules is None or self._rules[0] is not settings:
            self._rules = (settings, rules_from_settings(settings))
        return self._rules[1]

    @hookimpl
    def instance_stored(self, outcome, services) -> None:
        rules = self.rules(services.settings)
        record = outcome.record
        if not rules or record is None:
            return
        modality_cache: list[str | None] = []

        def modality() -> str | None:
            if not modality_cache:
                found = services.query.search(Principal.system(record.clinic_id, "forwarding"), "series",
                                              {"SeriesInstanceUID": record.series_uid}, limit=1)
                values = found.results[0].get("00080060", {}).get("Value") if found.results else None
                modality_cache.append(values[0] if values else None)
            return modality_cache[0]

        items: dict[str, ForwardItem] = {}
        for rule in rules:
            if rule.matches(record.clinic_id, record.sop_class_uid, modality):
                for destination in rule.to:
                    items.setdefault(destination, ForwardItem(
                        record.clinic_id, destination, record.study_uid, record.series_uid, record.sop_uid,
                        rule=rule.name))
        if items:
            services.index.enqueue_forwards(list(items.values()), now_ms=now_ms())
            logger.debug("queued %s for %s", record.sop_uid, ", ".join(items))
            if self.wake is not None:
                self.wake()


def register(pm, wake: Callable[[], None] | None = None) -> ForwardingPlugin:
    """Register the forwarding plugin on a plugin manager (once)."""
    plugin = pm.get_plugin(PLUGIN_NAME)
    if plugin is None:
        plugin = ForwardingPlugin(wake)
        pm.register(plugin, name=PLUGIN_NAME)
    elif wake is not None:
        plugin.wake = wake
    return plugin


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    # A killed process whose parent died too may stay a zombie until something reaps it
    # (in a container, maybe never): it answers signal 0 but holds nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class ForwardWorker:
    """Sends the forward queue: claim, send per destination, delete or reschedule."""

    def __init__(self, services, settings, peers: PeerTable | None = None):
        self.services = services
        self.index = services.index
        self.settings = settings
        self.peers = peers or PeerTable.from_settings(settings)
        self.ae_title = settings["dimse.ae_title"]
        self.batch_size = settings["forward.batch_size"]
        self.lease_ms = settings["forward.lease_seconds"] * 1000
        self.poll = settings["forward.poll_interval"]
        self.retry_initial = settings["forward.retry_initial"]
        self.retry_max = settings["forward.retry_max"]
        self.max_attempts = settings["forward.max_attempts"]
        self.host = socket.gethostname()
        self.owner_prefix = f"{self.host}:{os.getpid()}"
        self._claims = itertools.count(1)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ae = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> "ForwardWorker":
        self.release_dead_leases()
        self._thread = threading.Thread(target=self.run, name="forward-worker", daemon=True)
        self._thread.start()
        logger.info("forward worker started (%d rule(s))", len(self.settings["forward.rules"]))
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def release_dead_leases(self) -> int:
        """Release the leases of workers of this host whose process is gone (a crash, a kill)."""
        released = 0
        for owner in self.index.forward_lease_owners():
            parts = owner.rsplit(":", 2)  # host:pid:claim
            if len(parts) != 3 or parts[0] != self.host or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid != os.getpid() and not _pid_alive(pid):
                released += self.index.release_forwards(owner)
        if released:
            logger.info("released %d forward(s) leased by workers that are gone", released)
        return released

    def run(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_sweep > max(self.poll, 5):
                    # A process killed just before this one started was still alive at start.
                    self.release_dead_leases()
                    last_sweep = time.monotonic()
                claimed = self.run_once()
            except Exception:
                logger.exception("forward worker: queue unavailable; retrying")
                claimed = 0
                self._stop.wait(max(self.poll, 5))
            if not claimed:
                self._wake.wait(self.poll)
                self._wake.clear()

    # --- one round -----------------------------------------------------------------------
    def run_once(self) -> int:
        """Claim a batch and send it; return how many items were claimed."""
        owner = f"{self.owner_prefix}:{next(self._claims)}"
        items = self.index.claim_forwards(owner, now_ms=now_ms(), lease_ms=self.lease_ms, limit=self.batch_size)
        groups: dict[str, list[ForwardItem]] = {}
        for item in items:
            groups.setdefault(item.destination, []).append(item)
        try:
            for destination, group in groups.items():
                if self._stop.is_set():
                    break
                self._send(destination, group, owner)
        finally:
            if items:
                self.index.release_forwards(owner)  # what was not sent (stopping) is due again
        return len(items)

    def _fail(self, item: ForwardItem, owner: str, error: str, *, permanent: bool = False) -> None:
        give_up = permanent or item.attempts + 1 >= self.max_attempts
        delay = min(self.retry_initial * 2 ** item.attempts, self.retry_max)
        self.index.fail_forward(item.id, owner, error=error, next_attempt_ms=now_ms() + int(delay * 1000),
                                give_up=give_up, now_ms=now_ms())
        if give_up:
            logger.error("forward of %s to %s failed for good after %d attempt(s): %s", item.sop_uid,
                         item.destination, item.attempts + 1, error)
        else:
            logger.info("forward of %s to %s failed (attempt %d), next in %.1f s: %s", item.sop_uid,
                        item.destination, item.attempts + 1, delay, error)

    def _association(self, destination, records):
        from pynetdicom import AE, evt

        from gateway.dimse.scu import configure_pynetdicom, set_nodelay, store_contexts

        configure_pynetdicom()
        if self._ae is None:
            ae = AE(ae_title=self.ae_title)
            ae.acse_timeout = self.settings["dimse.acse_timeout"]
            ae.dimse_timeout = self.settings["dimse.dimse_timeout"]
            ae.network_timeout = self.settings["dimse.network_timeout"]
            ae.connection_timeout = self.settings["dimse.connection_timeout"]
            self._ae = ae
        return self._ae.associate(destination.host, destination.port, contexts=store_contexts(records),
                                  ae_title=destination.ae_title, max_pdu=0,
                                  evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])

    def _send(self, name: str, items: list[ForwardItem], owner: str) -> None:
        from gateway.dimse.scu import NoAcceptedContext, send_stored

        destination = self.peers.destination(name)
        if destination is None:
            for item in items:
                self._fail(item, owner, f"destination {name} is not declared in dimse.destinations", permanent=True)
            return
        work = []
        for item in items:
            record = self.index.find_instance(item.clinic_id, item.sop_uid)
            if record is None:  # deleted since it was queued: nothing left to send
                self.index.finish_forward(item.id, owner)
                logger.info("forward of %s to %s dropped: the instance was deleted", item.sop_uid, name)
            else:
                work.append((item, record))
        if not work:
            return
        assoc = self._association(destination, [r for _, r in work])
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "could not be reached"
            for item, _ in work:
                self._fail(item, owner, f"{name} ({destination.host}:{destination.port}) {why}")
            return
        sent = 0
        try:
            for item, record in work:
                if self._stop.is_set():
                    break
                if not assoc.is_established:
                    self._fail(item, owner, f"association with {name} was lost")
                    continue
                try:
                    response = send_stored(assoc, self.services.retrieve, record)
                except NoAcceptedContext as exc:
                    self._fail(item, owner, str(exc), permanent=True)
                    continue
                except GatewayError as exc:  # the stored blob cannot be read
                    self._fail(item, owner, exc.message)
                    continue
                except Exception as exc:
                    logger.exception("forward of %s to %s", item.sop_uid, name)
                    self._fail(item, owner, f"{type(exc).__name__}: {exc}")
                    continue
                code = response.get("Status") if response is not None else None
                if code is None:
                    self._fail(item, owner, f"{name} did not answer the C-STORE")
                elif code in _SUCCESS:
                    self.index.finish_forward(item.id, owner)
                    sent += 1
                else:
                    comment = response.get("ErrorComment", "")
                    permanent = code in _PERMANENT or any(lo <= code <= hi for lo, hi in _PERMANENT_RANGES)
                    self._fail(item, owner, f"{name} answered 0x{code:04X}" + (f": {comment}" if comment else ""),
                               permanent=permanent)
        finally:
            if assoc.is_established:
                assoc.release()
        if sent:
            logger.info("forwarded %d instance(s) to %s", sent, name)
