"""Access decisions on resources: the policy's role table, the tenant, and the shares.

The core services ask here before they touch the index:

- :meth:`AccessControl.require` checks that a role may do an action at all (403 otherwise,
  whatever the resource, so nothing is learnt about resources);
- :meth:`AccessControl.query_scope` gives the one query path its tenant scope: the
  principal's own clinic and the studies/series shared with it;
- :meth:`AccessControl.find` reads a study (series, instance) where the principal may: the
  own clinic first, then the clinics that share it (``view`` or ``download``), audits the
  read, and answers 404 when none has it, the same as for a study that does not exist (the
  audit log notes when it exists in another clinic);
- :meth:`AccessControl.admin_scope` gives the administration endpoints their clinic.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from auth import policy
from auth.audit import DENIED, NOT_FOUND, OK, AuditService, resource_name
from auth.base import Principal
from gateway.errors import BackendUnavailable, NotAuthorized, NotFound
from storage.errors import StorageError
from storage.query import SharedScope
from storage.records import ShareRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")

VIEW, DOWNLOAD = "view", "download"
PERMISSIONS = (VIEW, DOWNLOAD)


@dataclass
class Source:
    """Where (part of) a study may be read from."""

    clinic_id: str
    series: set[str] | None = None  # None: the whole study; else only these series
    shares: list[str] = field(default_factory=list)  # ids of the shares that grant it (empty: own clinic)

    def allows_series(self, series_uid: str) -> bool:
        return self.series is None or series_uid in self.series


def now_ms() -> int:
    return int(time.time() * 1000)


class AccessControl:
    """Decisions over the share store (``shares``) and the instance index (``index``: which
    clinics hold a study, for the audit of refusals), recorded in ``audit``."""

    def __init__(self, shares, index, audit: AuditService, *, operator_clinics=()):
        self.shares = shares
        self.index = index
        self.audit = audit
        self.operator_clinics = frozenset(operator_clinics)

    def require(self, principal: Principal, action: str, *, resource: str = "") -> str:
        """The principal's scope for ``action`` (policy.CLINIC or policy.SHARED); 403 when none."""
        try:
            return policy.require(principal, action)
        except NotAuthorized as exc:
            self.audit.record(action, DENIED, principal=principal, resource=resource, detail=exc.message)
            raise

    def grants(self, principal: Principal) -> list[ShareRecord]:
        """The active shares the principal may use."""
        now = now_ms()
        try:
            if principal.kind == "link":
                share = self.shares.get_share(principal.share_id) if principal.share_id else None
                return [share] if share is not None and share.active(now) else []
            if principal.kind == "system":
                return []
            user = principal.user_id if principal.kind == "user" else None
            return self.shares.active_shares(user_id=user, clinic_id=principal.clinic_id, now_ms=now)
        except StorageError as exc:
            raise BackendUnavailable(f"share lookup failed: {exc}") from exc

    def own_clinic(self, principal: Principal, action: str = policy.READ) -> str | None:
        return principal.clinic_id if policy.scope(principal, action) == policy.CLINIC else None

    def query_scope(self, principal: Principal) -> tuple[str | None, tuple[SharedScope, ...]]:
        """(own clinic or None, shared studies/series) for a search."""
        scope = self.require(principal, policy.READ, resource="search")
        own = principal.clinic_id if scope == policy.CLINIC else None
        shared = tuple(dict.fromkeys(SharedScope(g.clinic_id, g.study_uid, g.series_uid)
                                     for g in self.grants(principal) if g.clinic_id != own))
        return own, shared

    def sources(self, principal: Principal, study: str, series: str | None = None,
                need: str = VIEW) -> Iterator[Source]:
        """Where ``study`` (``series``) may be read from with permission ``need``: the own
        clinic (when the role reads it), then each sharing clinic. The caller looks for the
        study in each, in order, and calls :meth:`not_found` when none has it. Lazy: the
        shares are looked up only when the own clinic does not have the study."""
        scope = self.require(principal, policy.READ, resource=resource_name(study, series))
        own = principal.clinic_id if scope == policy.CLINIC else None
        if own is not None:
            yield Source(own)
        by_clinic: dict[str, Source] = {}
        for grant in self.grants(principal):
            if grant.clinic_id == own or grant.study_uid != study or not grant.allows(need):
                continue
            if series is not None and grant.series_uid not in (None, series):
                continue
            source = by_clinic.setdefault(grant.clinic_id, Source(grant.clinic_id, set()))
            source.shares.append(grant.id)
            if grant.series_uid is None:
                source.series = None
            elif source.series is not None:
                source.series.add(grant.series_uid)
        yield from by_clinic.values()

    def find(self, principal: Principal, study: str, series: str | None, sop: str | None, need: str,
             lookup: Callable[[Source], T | None], *, what: str) -> T:
        """What ``lookup`` finds in the first source the principal may read ``study`` from
        (:meth:`sources`), the read audited; :class:`NotFound` (audited) when no source has it.
        ``lookup`` returns None (or something empty) for a source without it."""
        for source in self.sources(principal, study, series, need):
            found = lookup(source)
            if found:
                self.audit.record("read", OK, principal=principal, resource=resource_name(study),
                                  resource_clinic=source.clinic_id,
                                  detail=need + (f" via share {', '.join(source.shares)}" if source.shares else ""))
                return found
        raise self.not_found(principal, "read", what, study, series, sop)

    def admin_scope(self, principal: Principal, asked: str | None, *, resource: str) -> str | None:
        """The clinic whose records (audit, jobs) an administrator sees: its own, or any
        (``asked``, None: every clinic) for the admins of ``auth.operator_clinics``. 403 without
        the admin action; another clinic than its own is a 404 for everyone else."""
        self.require(principal, policy.ADMIN, resource=resource)
        if principal.clinic_id in self.operator_clinics:
            return asked or None
        if asked not in (None, "", principal.clinic_id):
            raise NotFound(f"clinic {asked} not found")
        return principal.clinic_id

    def not_found(self, principal: Principal, action: str, what: str, study: str, series: str | None = None,
                  sop: str | None = None) -> NotFound:
        """The 404 of a study the principal cannot see; audited as refused when another clinic
        holds it (the caller is told nothing more than for a study that does not exist)."""
        resource = resource_name(study, series, sop)
        try:
            owners = [c for c in self.index.clinics_with_study(study) if c != principal.clinic_id]
        except StorageError:
            owners = []
        if owners:
            self.audit.record(action, DENIED, principal=principal, resource=resource, resource_clinic=owners[0],
                              detail=f"held by clinic {owners[0]}, not shared with this principal"
                                     + (f" (and {len(owners) - 1} more)" if len(owners) > 1 else ""))
        else:
            self.audit.record(action, NOT_FOUND, principal=principal, resource=resource)
        return NotFound(f"{what} not found")
