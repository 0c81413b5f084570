"""Users, created or updated from their identity token's claims on first use.

The claims read (standard OIDC ones, then common alternatives): ``preferred_username``
(``username``), ``email``, ``name`` (else ``given_name`` + ``family_name``),
``organization`` (``org``), ``department`` (``dept``); the subject and the clinic are the
principal's. A process writes a user again only when those values changed (or after
:data:`REFRESH_SECONDS`), so a viewer's many requests do not each write a row.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from auth.base import Principal, claim
from gateway.errors import BackendUnavailable, NotAuthorized
from storage.base import UserStore
from storage.errors import StorageError
from storage.records import UserRecord

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 3600
_CACHE_SIZE = 10_000
PROFILE_CLAIMS = {
    "username": ("preferred_username", "username"),
    "email": ("email",),
    "name": ("name",),
    "organization": ("organization", "org"),
    "department": ("department", "dept"),
}


def _text(value) -> str | None:
    if isinstance(value, (list, tuple)) and value:  # Keycloak maps multivalued attributes to lists
        value = value[0]
    if value is None or isinstance(value, (dict, list, tuple, bool)):
        return None
    text = str(value).strip()
    return text[:256] or None


def profile(principal: Principal) -> dict[str, str | None]:
    """The profile fields a principal's token claims give."""
    claims = principal.claims or {}
    values = {}
    for field, names in PROFILE_CLAIMS.items():
        values[field] = next((v for v in (_text(claim(claims, n)) for n in names) if v), None)
    if values["name"] is None:
        parts = [_text(claim(claims, n)) for n in ("given_name", "family_name")]
        values["name"] = " ".join(p for p in parts if p) or None
    return values


class UserService:
    def __init__(self, users: UserStore, *, clock=time.time):
        self.users = users
        self.clock = clock
        self._seen: OrderedDict[tuple, tuple[tuple, float]] = OrderedDict()
        self._lock = threading.Lock()

    def ensure(self, principal: Principal) -> UserRecord | None:
        """The principal's user row, created or updated from its claims when they changed;
        None for principals that are no user (links, DIMSE peers, the gateway itself)."""
        if principal.kind != "user":
            return None
        values = profile(principal)
        key = (principal.clinic_id, principal.user_id)
        digest = (tuple(values.items()), tuple(sorted(principal.roles)))
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and seen[0] == digest and now - seen[1] < REFRESH_SECONDS:
                return None
        now_ms = int(now * 1000)
        try:
            stored = self.users.upsert_user(UserRecord(principal.clinic_id, principal.user_id, **values,
                                                       roles=tuple(sorted(principal.roles)), created_at=now_ms,
                                                       updated_at=now_ms))
        except StorageError as exc:
            raise BackendUnavailable(f"user store failed: {exc}") from exc
        with self._lock:
            self._seen[key] = (digest, now)
            self._seen.move_to_end(key)
            while len(self._seen) > _CACHE_SIZE:
                self._seen.popitem(last=False)
        return stored

    def me(self, principal: Principal) -> UserRecord:
        """The principal's own user row (created now if needed); 403 for non-user principals."""
        if principal.kind != "user":
            raise NotAuthorized(f"a {principal.kind} principal has no user profile")
        stored = self.ensure(principal)
        if stored is not None:
            return stored
        try:
            found = self.users.get_user(principal.clinic_id, principal.user_id)
        except StorageError as exc:
            raise BackendUnavailable(f"user store failed: {exc}") from exc
        if found is None:  # removed behind this process's back: write it again
            with self._lock:
                self._seen.pop((principal.clinic_id, principal.user_id), None)
            return self.ensure(principal)
        return found
