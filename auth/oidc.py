"""Authentication provider ``oidc``: JWT access tokens of an OpenID Connect provider (Keycloak).

- Keys come from the JWKS at ``auth.oidc_jwks_url``, or at the ``jwks_uri`` of the issuer's
  discovery document (``<auth.oidc_issuer>/.well-known/openid-configuration``, whose
  ``issuer`` must equal the setting).
- Only asymmetric algorithms (``auth.oidc_algorithms``, default RS256 and ES256) are
  accepted, and each token's ``alg`` must be one of them *and* fit the key its ``kid``
  names: ``alg: none`` and HS256 signed with the public key as secret are refused.
- ``iss`` must equal ``auth.oidc_issuer``, ``aud`` name one of ``auth.oidc_audience``;
  ``exp``, ``nbf`` and ``iat`` are checked with ``auth.leeway`` seconds of skew.
- Rotation: a token whose ``kid`` is not in the cached JWKS makes the cache fetch the JWKS
  again, at most once per ``auth.oidc_jwks_min_refresh`` seconds (so a flood of tokens with
  made-up kids cannot make the gateway hammer the identity provider); the JWKS is also
  fetched again after ``auth.oidc_jwks_max_age`` seconds.
- Claims: the clinic from ``auth.oidc_clinic_claim`` (default ``clinicId``), the user from
  ``auth.oidc_user_claim`` (``sub``), roles from ``auth.oidc_roles_claims`` (default
  ``realm_access.roles`` and ``resource_access.<auth.oidc_client_id>.roles``).
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import Any, Callable

from auth.base import Principal, TokenAuthenticator, decode_jwt, unverified_header
from auth.local import principal_from_claims
from auth.verified_tokens import VerifiedTokens
from gateway.errors import BackendUnavailable, NotAuthenticated

logger = logging.getLogger(__name__)

# kty each algorithm family needs: a token's alg must fit its key's kty.
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def fetch_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - configured URL
        return json.loads(response.read(2 * 1024 * 1024))


class JwksCache:
    """The identity provider's public keys by kid, fetched lazily, refetched on an unknown kid
    (rate-limited) and when older than ``max_age``."""

    def __init__(self, url_getter: Callable[[], str], *, min_refresh: float = 30.0, max_age: float = 3600.0,
                 timeout: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[str, float], Any] = fetch_json):
        self._url_getter = url_getter
        self.min_refresh = min_refresh
        self.max_age = max_age
        self.timeout = timeout
        self.clock = clock
        self._fetch = fetch
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def _refresh(self) -> None:
        import jwt

        url = self._url_getter()
        try:
            document = self._fetch(url, self.timeout)
        except Exception as exc:  # noqa: BLE001 - network, HTTP, JSON: all mean "no keys now"
            self._fetched_at = self.clock()  # also rate-limits retries against a provider that is down
            raise BackendUnavailable(f"identity provider keys unavailable ({url}): {exc}") from None
        self.fetches += 1
        self._fetched_at = self.clock()
        keys = {}
        for entry in (document or {}).get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or "kid" not in entry:
                continue
            if entry.get("kty") not in ("RSA", "EC", "OKP"):  # never a shared secret ("oct")
                continue
            try:
                keys[str(entry["kid"])] = jwt.PyJWK(entry)
            except Exception as exc:  # noqa: BLE001 - an unusable key (unknown kty, HMAC "oct") is skipped
                logger.warning("JWKS key %s skipped: %s", entry.get("kid"), exc)
        self._keys = keys
        logger.info("JWKS fetched from %s: %d key(s)", url, len(keys))

    def get(self, kid: str):
        """The key named ``kid``, or None when the provider (still) has none by that name."""
        with self._lock:
            now = self.clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
            if stale:
                self._refresh()
            key = self._keys.get(kid)
            if key is None and not stale and now - self._fetched_at >= self.min_refresh:
                logger.info("unknown kid %r: fetching the JWKS again", kid[:64])
                self._refresh()
                key = self._keys.get(kid)
            return key


class OidcAuthenticator(TokenAuthenticator):
    def __init__(self, *, issuer: str, audience: list[str], algorithms: list[str], jwks: JwksCache,
                 leeway: int = 30, clinic_claim: str = "clinicId", user_claim: str = "sub",
                 roles_claims: list[str] | None = None, patient_role: bool = False, cache_seconds: float = 60.0):
        if not issuer:
            raise ValueError("auth.provider is 'oidc' but auth.oidc_issuer is empty")
        if not audience:
            raise ValueError("auth.provider is 'oidc' but auth.oidc_audience is empty (the client id "
                             "the tokens are issued for)")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.jwks = jwks
        self.leeway = leeway
        self.clinic_claim = clinic_claim
        self.user_claim = user_claim
        self.roles_claims = roles_claims or ["realm_access.roles"]
        self.patient_role = patient_role
        self.verified = VerifiedTokens(max_age=cache_seconds)

    @classmethod
    def from_settings(cls, settings) -> "OidcAuthenticator":
        """Raises :class:`ValueError` naming a setting it cannot work without."""
        issuer = settings["auth.oidc_issuer"].rstrip("/")
        timeout = settings["auth.oidc_http_timeout"]
        configured = settings["auth.oidc_jwks_url"]
        discovered: dict[str, str] = {}

        def jwks_url() -> str:
            if configured:
                return configured
            if "url" not in discovered:
                url = f"{issuer}/.well-known/openid-configuration"
                try:
                    document = fetch_json(url, timeout)
                except Exception as exc:  # noqa: BLE001
                    raise BackendUnavailable(f"OIDC discovery failed ({url}): {exc}") from None
                if str(document.get("issuer", "")).rstrip("/") != issuer:
                    raise BackendUnavailable(f"OIDC discovery at {url} names issuer {document.get('issuer')!r}, "
                                             f"not {issuer!r}")
                discovered["url"] = document["jwks_uri"]
            return discovered["url"]

        client = settings["auth.oidc_client_id"]
        roles_claims = [c.replace("{client_id}", client) for c in settings["auth.oidc_roles_claims"]
                        if client or "{client_id}" not in c]
        return cls(issuer=issuer, audience=settings["auth.oidc_audience"],
                   algorithms=settings["auth.oidc_algorithms"],
                   jwks=JwksCache(jwks_url, min_refresh=settings["auth.oidc_jwks_min_refresh"],
                                  max_age=settings["auth.oidc_jwks_max_age"], timeout=timeout),
                   leeway=settings["auth.leeway"], clinic_claim=settings["auth.oidc_clinic_claim"],
                   user_claim=settings["auth.oidc_user_claim"], roles_claims=roles_claims,
                   patient_role=settings["auth.patient_role"], cache_seconds=settings["auth.token_cache_seconds"])

    def verify(self, token: str) -> Principal:
        known = self.verified.get(token, self.jwks.get)
        if known is not None:
            return known
        header = unverified_header(token)
        alg = str(header.get("alg"))
        if alg not in self.algorithms:
            raise NotAuthenticated(f"token algorithm {alg[:16]!r} not allowed (allowed: {', '.join(self.algorithms)})")
        kid = header.get("kid")
        if not kid:
            raise NotAuthenticated("token has no key id (kid)")
        key = self.jwks.get(str(kid))
        if key is None:
            raise NotAuthenticated(f"token signed with an unknown key id {str(kid)[:64]!r}")
        declared = key._jwk_data.get("alg")  # the key's own alg, when the JWKS names one
        if _KTY.get(alg[:2]) != key.key_type or (declared and declared != alg):
            raise NotAuthenticated(f"token algorithm {alg[:16]!r} does not fit the key it names")
        claims = decode_jwt(token, key.key, algorithms=[alg], issuer=self.issuer, audience=self.audience,
                            leeway=self.leeway)
        principal = principal_from_claims(claims, clinic_claim=self.clinic_claim, user_claim=self.user_claim,
                                          roles_claims=self.roles_claims, patient_role=self.patient_role)
        self.verified.put(token, principal, str(kid), key, claims["exp"])
        return principal
