"""Signed URLs: a client (an ``<img>`` tag, a CDN, a download manager) fetches a resource
without an Authorization header.

- **Gateway URLs** carry ``gw_exp`` (expiry, seconds since the epoch), ``gw_kid`` (the key
  id), ``gw_sub``/``gw_clinic``/``gw_roles`` (or ``gw_share``: whom the URL acts for) and
  ``gw_sig``: an HMAC-SHA256 over the method, the path, the other query parameters (sorted)
  and those values. Changing any of them, or using the URL with another method or after its
  expiry, is refused (401). The request then runs as that principal, through the same
  checks as any other (tenant, role, shares): a share revoked after signing stops the URL.
  Keys: ``auth.url_signing_keys`` = ``kid:base64key,...`` (the first signs, all verify:
  add a new key first to rotate, drop the old one after the longest URL lifetime); when
  empty, a key is generated in ``<auth.key_dir>/url-signing-keys.json`` (for several
  machines, set the setting on all of them).
- **S3 presigned URLs** when the blob store is S3: the object is fetched from S3 directly.
  Access is checked when the URL is made; a revocation cannot recall it, so it lives
  ``auth.signed_url_ttl`` (10 minutes by default, at most ``auth.signed_url_max_ttl``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Mapping
from urllib.parse import urlencode

from auth.base import Principal
from auth.local import key_dir, locked, write_private
from gateway.errors import NotAuthenticated

logger = logging.getLogger(__name__)

PARAMS = ("gw_exp", "gw_kid", "gw_sub", "gw_clinic", "gw_roles", "gw_share", "gw_sig")
SIGNATURE_PARAM = "gw_sig"
KEYS_FILE = "url-signing-keys.json"


def parse_keys(text: str) -> list[tuple[str, bytes]]:
    """``kid:base64,kid2:base64`` → [(kid, key bytes)]."""
    keys = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not kid.strip():
            raise ValueError("auth.url_signing_keys: expected kid:base64key[,kid:base64key...]")
        try:
            key = base64.b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4), altchars=b"-_")
        except ValueError:
            raise ValueError(f"auth.url_signing_keys: key {kid!r} is not base64") from None
        if len(key) < 32:
            raise ValueError(f"auth.url_signing_keys: key {kid!r} is shorter than 32 bytes")
        keys.append((kid.strip(), key))
    return keys


def generated_keys(folder: Path) -> list[tuple[str, bytes]]:
    """The keys in ``folder/url-signing-keys.json``, created on first use."""
    path = folder / KEYS_FILE
    if not path.exists():
        with locked(folder):
            if not path.exists():
                kid = "u" + secrets.token_hex(4)
                write_private(path, {"keys": [{"kid": kid, "key": base64.urlsafe_b64encode(
                    secrets.token_bytes(32)).decode(), "created_at": int(time.time())}]})
                logger.info("URL signing: created key %s in %s", kid, path)
    data = json.loads(path.read_text())
    return [(k["kid"], base64.urlsafe_b64decode(k["key"])) for k in data["keys"]]


def rotate_generated_keys(folder: Path) -> str:
    """Put a new key first in ``folder/url-signing-keys.json`` (the old ones keep verifying)."""
    generated_keys(folder)
    with locked(folder):
        path = folder / KEYS_FILE
        data = json.loads(path.read_text())
        kid = "u" + secrets.token_hex(4)
        data["keys"].insert(0, {"kid": kid, "key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                                "created_at": int(time.time())})
        write_private(path, data)
    return kid


class UrlSigner:
    def __init__(self, keys: list[tuple[str, bytes]], *, default_ttl: int = 600, max_ttl: int = 3600):
        if not keys:
            raise ValueError("no URL signing key")
        self.keys = dict(keys)
        self.active = keys[0][0]
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl

    @classmethod
    def from_settings(cls, settings) -> "UrlSigner":
        configured = settings["auth.url_signing_keys"]
        keys = parse_keys(configured) if configured else generated_keys(key_dir(settings))
        return cls(keys, default_ttl=settings["auth.signed_url_ttl"], max_ttl=settings["auth.signed_url_max_ttl"])

    @staticmethod
    def _message(method: str, path: str, query: Mapping[str, str]) -> bytes:
        canonical = urlencode(sorted((k, v) for k, v in query.items() if k != SIGNATURE_PARAM))
        return f"{method.upper()}\n{path}\n{canonical}".encode()

    def _mac(self, kid: str, message: bytes) -> str:
        digest = hmac.new(self.keys[kid], message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def ttl(self, requested: int | None) -> int:
        ttl = self.default_ttl if requested is None else requested
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        return min(ttl, self.max_ttl)

    def sign(self, method: str, path: str, principal: Principal, *, params: Mapping[str, str] | None = None,
             ttl: int | None = None, now: int | None = None) -> dict[str, str]:
        """The query parameters (``params`` plus the gw_* ones) that make ``method path`` signed."""
        query = {k: str(v) for k, v in (params or {}).items() if k not in PARAMS}
        query["gw_exp"] = str((int(time.time()) if now is None else now) + self.ttl(ttl))
        query["gw_kid"] = self.active
        if principal.kind == "link":
            query["gw_share"] = principal.share_id or ""
        else:
            query["gw_sub"], query["gw_clinic"] = principal.user_id, principal.clinic_id
            query["gw_roles"] = ",".join(sorted(principal.roles))
        query[SIGNATURE_PARAM] = self._mac(self.active, self._message(method, path, query))
        return query

    def verify(self, method: str, path: str, query: Mapping[str, str], *, now: int | None = None) -> dict[str, str]:
        """The signed values of a request's query; NotAuthenticated when anything was changed,
        the key is unknown, or the URL has expired."""
        kid = query.get("gw_kid", "")
        if kid not in self.keys:
            raise NotAuthenticated("signed URL with an unknown or retired key id")
        expected = self._mac(kid, self._message(method, path, query))
        if not hmac.compare_digest(expected, query.get(SIGNATURE_PARAM, "")):
            raise NotAuthenticated("signed URL does not verify (changed, or used with another method or path)")
        try:
            expires = int(query.get("gw_exp", ""))
        except ValueError:
            raise NotAuthenticated("signed URL without a valid expiry") from None
        if (int(time.time()) if now is None else now) >= expires:
            raise NotAuthenticated("signed URL has expired")
        return dict(query)


def signed_principal(values: Mapping[str, str], shares) -> Principal:
    """The principal a verified signed URL acts for (a link share is checked again now)."""
    if values.get("gw_share"):
        share = shares.link_share(values["gw_share"])
        if share is None:
            raise NotAuthenticated("the share link of this signed URL was revoked or has expired")
        return Principal(f"link:{share.id}", share.clinic_id, frozenset({"link"}), kind="link", share_id=share.id)
    roles = frozenset(r for r in values.get("gw_roles", "").split(",") if r)
    return Principal(values.get("gw_sub", ""), values.get("gw_clinic", ""), roles, kind="user")
