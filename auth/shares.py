"""Shares: a clinic makes one of its studies (or one series of it) visible to a user, another
clinic, or anyone holding a link, with permissions (``view``; ``download`` of the original
instances too) until an expiry; revocable at once.

- Only principals whose role may ``share`` (policy) create, list and revoke the shares of
  their own clinic; the study must exist in that clinic (404 otherwise).
- A share to a clinic is seen by every user of that clinic whose role reads, and by its
  DIMSE peers; a share to a user by that user (only when acting for ``clinic`` if the target
  names one).
- A link share returns a token once (``gwl_`` + 256 random bits; only its sha256 is stored).
  Whoever presents it as ``Authorization: Bearer <token>`` (or ``?share=<token>``) reads
  that share and nothing else, without an account, until it expires or is revoked.
- Every check happens on every access: a revoked or expired share stops working on the
  next request (no cache).
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import uuid

from auth import policy
from auth.access import DOWNLOAD, PERMISSIONS, VIEW, AccessControl, now_ms
from auth.audit import OK, AuditService, resource_name
from auth.base import Principal
from gateway.errors import BackendUnavailable, BadRequest, NotAuthenticated, NotFound
from storage.errors import StorageError
from storage.records import ShareRecord

logger = logging.getLogger(__name__)

LINK_PREFIX = "gwl_"
TARGET_TYPES = ("user", "clinic", "link")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_link_token(token: str) -> bool:
    return token.startswith(LINK_PREFIX)


class ShareService:
    """Shares over a :class:`storage.base.ShareStore`; ``index`` (the instance index) tells
    whether the study to share exists in the principal's clinic."""

    def __init__(self, store, index, access: AccessControl, audit: AuditService, *, default_ttl: int, max_ttl: int):
        self.store = store
        self.index = index
        self.access = access
        self.audit = audit
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        # Called with each share created or revoked, once it is stored (the image metadata
        # mirrors the share state: MetadataService.share_changed); set by Services.build.
        self.changed: list = []

    def _changed(self, share: ShareRecord) -> None:
        for listener in self.changed:
            try:
                listener(share)
            except Exception:
                logger.exception("a listener of the change of share %s failed", share.id)

    @classmethod
    def from_settings(cls, store, index, access, audit, settings) -> "ShareService":
        return cls(store, index, access, audit, default_ttl=settings["auth.share_default_ttl"],
                   max_ttl=settings["auth.share_max_ttl"])

    def _call(self, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StorageError as exc:
            raise BackendUnavailable(f"share store failed: {exc}") from exc

    # --- create ------------------------------------------------------------------------
    def create(self, principal: Principal, *, study: str, series: str | None, targets: list[dict],
               permissions: list[str] | None = None, expires_at_ms: int | None = None,
               ttl: int | None = None) -> list[tuple[ShareRecord, str | None]]:
        """One share per target; returns (share, link token or None) pairs."""
        resource = resource_name(study, series)
        self.access.require(principal, policy.SHARE, resource=resource)
        if policy.scope(principal, policy.SHARE) != policy.CLINIC:
            raise NotFound(f"study {study} not found")
        perms = self._permissions(permissions)
        expires = self._expiry(expires_at_ms, ttl)
        parsed = [self._target(t) for t in targets] if isinstance(targets, list) else None
        if not parsed:
            raise BadRequest('"targets" must be a non-empty list such as [{"type": "clinic", "id": "lab-1"}]')
        records = self._call(self.index.instances, principal.clinic_id, study, series)
        if not records:
            raise self.access.not_found(principal, "share", f"series {series} of study {study}" if series
                                        else f"study {study}", study, series)
        now = now_ms()
        created = []
        for target_type, target_id, target_clinic in parsed:
            token = LINK_PREFIX + secrets.token_urlsafe(32) if target_type == "link" else None
            share = ShareRecord(
                id=uuid.uuid4().hex, clinic_id=principal.clinic_id, study_uid=study, series_uid=series,
                target_type=target_type, target_id=target_id, permissions=perms, created_by=principal.user_id,
                created_at=now, expires_at=expires, target_clinic=target_clinic,
                token_hash=token_hash(token) if token else None)
            self._call(self.store.add_share, share)
            self.audit.record("share", OK, principal=principal, resource=resource, resource_clinic=principal.clinic_id,
                              detail=f"share {share.id} to {target_type}"
                                     + (f" {target_id}" if target_id else "")
                                     + (f" of clinic {target_clinic}" if target_clinic else "")
                                     + f", {'+'.join(perms)}, until {expires}")
            created.append((share, token))
        for share, _ in created:
            self._changed(share)
        return created

    @staticmethod
    def _permissions(permissions) -> tuple[str, ...]:
        if permissions is None:
            return (VIEW,)
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise BadRequest('"permissions" must be a list of "view", "download"')
        unknown = [p for p in permissions if p not in PERMISSIONS]
        if unknown or not permissions:
            raise BadRequest(f'unknown permission {unknown[0]!r}: use "view", "download"' if unknown
                             else '"permissions" must not be empty')
        return (VIEW, DOWNLOAD) if DOWNLOAD in permissions else (VIEW,)  # download implies view

    def _expiry(self, expires_at_ms: int | None, ttl: int | None) -> int:
        now = now_ms()
        if expires_at_ms is not None and ttl is not None:
            raise BadRequest('give "expires_at" or "ttl", not both')
        if ttl is not None:
            if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
                raise BadRequest('"ttl" must be a positive number of seconds')
            expires_at_ms = now + ttl * 1000
        if expires_at_ms is None:
            expires_at_ms = now + self.default_ttl * 1000
        if expires_at_ms <= now:
            raise BadRequest("the expiry is in the past")
        if expires_at_ms > now + self.max_ttl * 1000:
            raise BadRequest(f"the expiry is more than auth.share_max_ttl ({self.max_ttl} s) away")
        return expires_at_ms

    @staticmethod
    def _target(target) -> tuple[str, str | None, str | None]:
        if not isinstance(target, dict) or target.get("type") not in TARGET_TYPES:
            raise BadRequest('each target is {"type": "user", "id": ..., ["clinic": ...]}, '
                             '{"type": "clinic", "id": ...} or {"type": "link"}')
        kind = target["type"]
        unknown = set(target) - {"type", "id", "clinic"}
        if unknown:
            raise BadRequest(f"unknown key {sorted(unknown)[0]!r} in a share target")
        if kind == "link":
            if target.get("id") or target.get("clinic"):
                raise BadRequest("a link target has no id or clinic")
            return kind, None, None
        ident = target.get("id")
        if not isinstance(ident, str) or not ident.strip():
            raise BadRequest(f'a {kind} target needs an "id"')
        clinic = target.get("clinic")
        if clinic is not None and (kind != "user" or not isinstance(clinic, str) or not clinic.strip()):
            raise BadRequest('"clinic" qualifies a user target only, and must be a clinic id')
        return kind, ident.strip(), clinic.strip() if clinic else None

    # --- read, revoke -----------------------------------------------------------------
    def get(self, principal: Principal, share_id: str) -> ShareRecord:
        """A share of the principal's clinic (with the share role), or one targeting it."""
        share = self._call(self.store.get_share, share_id)
        if share is not None and self._may_see(principal, share):
            return share
        raise NotFound(f"share {share_id} not found")

    def _may_see(self, principal: Principal, share: ShareRecord) -> bool:
        if share.clinic_id == principal.clinic_id and policy.scope(principal, policy.SHARE) == policy.CLINIC:
            return True
        if principal.kind == "link":
            return share.id == principal.share_id
        if share.target_type == "clinic":
            return share.target_id == principal.clinic_id
        return (share.target_type == "user" and share.target_id == principal.user_id
                and share.target_clinic in (None, principal.clinic_id))

    def list(self, principal: Principal, *, incoming: bool, study: str | None = None, active_only: bool = True,
             limit: int = 100, offset: int = 0) -> list[ShareRecord]:
        if incoming:
            self.access.require(principal, policy.READ, resource="shares")
            found = self.access.grants(principal)
            if study:
                found = [s for s in found if s.study_uid == study]
            return found[offset:offset + limit]
        self.access.require(principal, policy.SHARE, resource="shares")
        if policy.scope(principal, policy.SHARE) != policy.CLINIC:
            return []
        found = self._call(self.store.list_shares, clinic_id=principal.clinic_id,
                           active_at=now_ms() if active_only else None, limit=limit if not study else 100_000,
                           offset=offset if not study else 0)
        if study:
            found = [s for s in found if s.study_uid == study][offset:offset + limit]
        return found

    def revoke(self, principal: Principal, share_id: str) -> ShareRecord:
        """Revoke a share of the principal's clinic: it stops working on the next request."""
        self.access.require(principal, policy.SHARE, resource=f"share:{share_id}")
        share = self._call(self.store.get_share, share_id)
        if share is None or share.clinic_id != principal.clinic_id or \
                policy.scope(principal, policy.SHARE) != policy.CLINIC:
            self.audit.record("revoke", "not_found", principal=principal, resource=f"share:{share_id}",
                              resource_clinic=share.clinic_id if share else None)
            raise NotFound(f"share {share_id} not found")
        if share.revoked_at is None:
            self._call(self.store.revoke_share, share_id, by=principal.user_id, now_ms=now_ms())
            self.audit.record("revoke", OK, principal=principal,
                              resource=resource_name(share.study_uid, share.series_uid),
                              resource_clinic=share.clinic_id, detail=f"share {share_id}")
            share = self._call(self.store.get_share, share_id)
            self._changed(share)
        return share

    # --- links ------------------------------------------------------------------------
    def link_share(self, share_id: str) -> ShareRecord | None:
        """The link share ``share_id`` while it is active (a signed URL acting for a link)."""
        share = self._call(self.store.get_share, share_id)
        if share is None or share.target_type != "link" or not share.active(now_ms()):
            return None
        return share

    def link_principal(self, token: str) -> Principal:
        """The principal of a link token: it reads its share only, until expiry or revocation."""
        share = self._call(self.store.share_by_token, token_hash(token)) if is_link_token(token) else None
        if share is None or share.target_type != "link":
            raise NotAuthenticated("unknown share link")
        if share.revoked_at is not None:
            raise NotAuthenticated("this share link was revoked")
        if not share.active(now_ms()):
            raise NotAuthenticated("this share link has expired")
        return Principal(f"link:{share.id}", share.clinic_id, frozenset({"link"}), kind="link", share_id=share.id)
