"""Who is asking: the principal every request carries through every front door, and the
interface of the authentication providers that establish it.

A provider (entry-point group ``gateway.auth_providers``: ``local``, ``oidc``) is a class
with ``from_settings(settings)`` and :meth:`Authenticator.authenticate`; it turns the
request's bearer token into a :class:`Principal` or raises :class:`NotAuthenticated`
(HTTP 401 with ``WWW-Authenticate: Bearer``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

from gateway.errors import NotAuthenticated

DEFAULT_CLINIC = "default"


@dataclass(frozen=True)
class Principal:
    """A user (or a DIMSE peer, a link, the gateway itself) acting for one clinic.

    ``kind`` is ``user`` (a token of an identity provider), ``link`` (the holder of a link
    share's token: it sees that share only, ``share_id``), ``dimse`` (a peer AE) or
    ``system`` (the gateway's own jobs and CLI).
    """

    user_id: str
    clinic_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    kind: str = "user"
    share_id: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @classmethod
    def system(cls, clinic_id: str, name: str = "system") -> "Principal":
        """The gateway's own work for a clinic (forwarding, migrations, imports)."""
        return cls(name, clinic_id, frozenset({"system"}), kind="system")


@runtime_checkable
class Authenticator(Protocol):
    """An authentication provider."""

    def authenticate(self, request) -> Principal:
        """The principal of ``request`` (a Flask request), from its ``Authorization: Bearer``
        header; raises :class:`NotAuthenticated` when it has none or an invalid one."""

    def verify(self, token: str) -> Principal:
        """The principal of a bearer token; raises :class:`NotAuthenticated`."""


def bearer_token(request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; NotAuthenticated otherwise."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise NotAuthenticated("authentication required: send Authorization: Bearer <token> "
                               "(get one with 'gateway token')", error=None)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("the Authorization header must be 'Bearer <token>'", error="invalid_request")
    return token.strip()


class TokenAuthenticator:
    """Base of the providers: :meth:`authenticate` reads the bearer token and calls :meth:`verify`."""

    def authenticate(self, request) -> Principal:
        return self.verify(bearer_token(request))

    def verify(self, token: str) -> Principal:  # pragma: no cover - abstract
        raise NotImplementedError


def decode_jwt(token: str, key, *, algorithms: list[str], issuer: str, audience, leeway: int) -> dict:
    """Verify a JWT's signature and registered claims with PyJWT; every failure is a
    :class:`NotAuthenticated` naming its cause (never the key or the token)."""
    import jwt

    try:
        return jwt.decode(token, key, algorithms=algorithms, issuer=issuer, audience=audience, leeway=leeway,
                          options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_signature": True})
    except jwt.ExpiredSignatureError:
        raise NotAuthenticated("token expired") from None
    except jwt.ImmatureSignatureError:
        raise NotAuthenticated("token not yet valid (nbf or iat in the future)") from None
    except jwt.InvalidAudienceError:
        raise NotAuthenticated("token is not for this audience (aud)") from None
    except jwt.InvalidIssuerError:
        raise NotAuthenticated("token of another issuer (iss)") from None
    except jwt.InvalidSignatureError:
        raise NotAuthenticated("token signature does not verify") from None
    except jwt.InvalidAlgorithmError:
        raise NotAuthenticated(f"token algorithm not allowed (allowed: {', '.join(algorithms)})") from None
    except jwt.MissingRequiredClaimError as exc:
        raise NotAuthenticated(f"token lacks the {exc.claim} claim") from None
    except jwt.InvalidTokenError as exc:
        raise NotAuthenticated(f"malformed token: {type(exc).__name__}") from None
    except (ValueError, TypeError) as exc:  # a key that does not fit the algorithm
        raise NotAuthenticated(f"token cannot be verified: {type(exc).__name__}") from None


def unverified_header(token: str) -> dict:
    """The JOSE header, before anything is trusted (to pick the key by ``kid``)."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise NotAuthenticated("malformed token: not a JWS compact serialization") from None
    if not isinstance(header, dict):
        raise NotAuthenticated("malformed token header")
    alg = str(header.get("alg", ""))
    if alg.lower() == "none" or not alg:
        raise NotAuthenticated("unsigned tokens (alg none) are refused")
    return header


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``); None when absent."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# The gateway's own principal for command-line work on the embedded default clinic
# (`gateway import` without --clinic).
EMBEDDED_PRINCIPAL = Principal("embedded", DEFAULT_CLINIC, frozenset({"admin"}), kind="system")

__all__ = ["DEFAULT_CLINIC", "EMBEDDED_PRINCIPAL", "Authenticator", "NotAuthenticated", "Principal",
           "TokenAuthenticator", "bearer_token", "claim", "decode_jwt", "unverified_header"]
