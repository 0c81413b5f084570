"""Forwarding: every stored instance, from any front door, sent on to remote AEs by C-STORE.

A built-in plugin (entry point ``forwarding`` of group ``gateway.plugins``). Rules come from
``forward.rules``; destinations from ``dimse.destinations``::

    [[forward.rules]]
    name = "all-to-pacs"
    to = ["HOSPITAL_PACS"]         # destination AE titles
    clinic = ""                    # optional: only this clinic's instances
    modalities = ["CT", "PX"]      # optional: only these series modalities
    sop_classes = []               # optional: only these SOP classes

On ``instance_stored``, in the process that stored the instance, right after the store, it
queues one job of kind ``forward`` per destination on the durable job queue (shared by
every process). Its :class:`ForwardHandler` sends a claimed batch as stored, over one
association per destination, finishes what was delivered, and reschedules failures with
exponential backoff (``forward.retry_initial`` doubling up to ``forward.retry_max``) until
``forward.max_attempts``, after which the job is ``failed`` (the dead letter) and waits for
``gateway forwards retry`` or the admin endpoint. A refusal that will not change (0xA900...)
gives up at once. Delivery is at least once: a crash between the remote's success and the
job's removal sends that instance again, which a PACS treats as a duplicate.

A forward job: ``clinic_id`` of the instance, key ``{destination}/{sop_uid}`` and payload
``{"destination", "study_uid", "series_uid", "sop_uid", "rule"}``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pynetdicom import AE, evt

from gateway.config import SettingsError
from gateway.dimse.peers import PeerTable
from gateway.dimse.scu import (
    NoAcceptedContext,
    configure_pynetdicom,
    send_stored,
    set_nodelay,
    store_contexts,
)
from gateway.errors import GatewayError
from gateway.services.jobs import JobRun, RetryPolicy
from plugins.hookspecs import hookimpl
from storage.records import Job

logger = logging.getLogger(__name__)

KIND = "forward"
# Remote statuses that will not change by sending again (PS3.4 B.2.3, PS3.7 C).
_SUCCESS = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}
_PERMANENT_RANGES = ((0xA900, 0xA9FF), (0xC000, 0xCFFF))
_PERMANENT = {0x0111, 0x0117, 0x0122, 0x0124, 0x0210, 0x0211, 0x0212}


@dataclass(frozen=True)
class ForwardRule:
    name: str
    to: tuple[str, ...]
    clinic: str = ""
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()

    def matches(self, clinic: str, sop_class: str, modality: str | None) -> bool:
        if self.clinic and clinic != self.clinic:
            return False
        if self.sop_classes and sop_class not in self.sop_classes:
            return False
        return not self.modalities or (modality or "").upper() in self.modalities


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


_rules_cache: dict[int, tuple[object, list[ForwardRule]]] = {}


def _rules(settings) -> list[ForwardRule]:
    cached = _rules_cache.get(id(settings))
    if cached is None or cached[0] is not settings:
        cached = _rules_cache[id(settings)] = (settings, rules_from_settings(settings))
    return cached[1]


def forward_jobs(outcome, rules: list[ForwardRule]) -> list[Job]:
    """One job per destination of the rules that match a stored instance."""
    record = outcome.record
    jobs: dict[str, Job] = {}
    for rule in rules:
        if rule.matches(record.clinic_id, record.sop_class_uid, outcome.modality):
            for destination in rule.to:
                jobs.setdefault(destination, Job(
                    KIND, f"{destination}/{record.sop_uid}", record.clinic_id,
                    {"destination": destination, "study_uid": record.study_uid, "series_uid": record.series_uid,
                     "sop_uid": record.sop_uid, "rule": rule.name}))
    return list(jobs.values())


@hookimpl
def instance_stored(outcome, settings, jobs) -> None:
    rules = _rules(settings)
    if not rules or outcome.record is None:
        return
    queued = forward_jobs(outcome, rules)
    if queued:
        jobs.enqueue(queued)
        logger.debug("queued %s for %s", outcome.record.sop_uid, ", ".join(j.payload["destination"] for j in queued))


@hookimpl
def register_job_handlers(services):
    return [ForwardHandler(services)]


class ForwardHandler:
    """Sends claimed forward jobs, grouped by destination, one association per group."""

    kind = KIND

    def __init__(self, services):
        settings = services.settings
        self.services = services
        self.settings = settings
        self.peers = PeerTable.from_settings(settings)
        self.batch_size = settings["forward.batch_size"]
        self.lease_seconds = settings["forward.lease_seconds"]
        self.poll_interval = settings["forward.poll_interval"]
        self.retry = RetryPolicy(settings["forward.retry_initial"], settings["forward.retry_max"],
                                 settings["forward.max_attempts"])
        self._ae = None

    def enabled(self) -> bool:
        return bool(_rules(self.settings))

    def run(self, jobs: list[Job], run: JobRun) -> None:
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.payload["destination"], []).append(job)
        for destination, group in groups.items():
            if run.stopping:
                return
            self._send(destination, group, run)

    def _association(self, destination, records):
        configure_pynetdicom()
        if self._ae is None:
            ae = AE(ae_title=self.settings["dimse.ae_title"])
            ae.acse_timeout = self.settings["dimse.acse_timeout"]
            ae.dimse_timeout = self.settings["dimse.dimse_timeout"]
            ae.network_timeout = self.settings["dimse.network_timeout"]
            ae.connection_timeout = self.settings["dimse.connection_timeout"]
            self._ae = ae
        return self._ae.associate(destination.host, destination.port, contexts=store_contexts(records),
                                  ae_title=destination.ae_title, max_pdu=0,
                                  evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])

    def _send(self, name: str, jobs: list[Job], run: JobRun) -> None:
        destination = self.peers.destination(name)
        if destination is None:
            for job in jobs:
                run.failed(job, f"destination {name} is not declared in dimse.destinations", permanent=True)
            return
        work = []
        for job in jobs:
            record = self.services.index.find_instance(job.clinic_id, job.payload["sop_uid"])
            if record is None:  # deleted since it was queued: nothing left to send
                run.done(job)
                logger.info("forward of %s to %s dropped: the instance was deleted", job.payload["sop_uid"], name)
            else:
                work.append((job, record))
        if not work:
            return
        assoc = self._association(destination, [r for _, r in work])
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "could not be reached"
            for job, _ in work:
                run.failed(job, f"{name} ({destination.host}:{destination.port}) {why}")
            return
        sent = 0
        try:
            for job, record in work:
                if run.stopping:
                    break
                run.keep_alive()
                if not assoc.is_established:
                    run.failed(job, f"association with {name} was lost")
                    continue
                try:
                    response = send_stored(assoc, self.services.transcode, record)
                except NoAcceptedContext as exc:
                    run.failed(job, str(exc), permanent=True)
                    continue
                except GatewayError as exc:  # the stored blob cannot be read
                    run.failed(job, exc.message)
                    continue
                except Exception as exc:
                    logger.exception("forward of %s to %s", record.sop_uid, name)
                    run.failed(job, f"{type(exc).__name__}: {exc}")
                    continue
                code = response.get("Status") if response is not None else None
                if code is None:
                    run.failed(job, f"{name} did not answer the C-STORE")
                elif code in _SUCCESS:
                    run.done(job)
                    sent += 1
                else:
                    comment = response.get("ErrorComment", "")
                    permanent = code in _PERMANENT or any(lo <= code <= hi for lo, hi in _PERMANENT_RANGES)
                    run.failed(job, f"{name} answered 0x{code:04X}" + (f": {comment}" if comment else ""),
                               permanent=permanent)
        finally:
            if assoc.is_established:
                assoc.release()
        if sent:
            logger.info("forwarded %d instance(s) to %s", sent, name)
