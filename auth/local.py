"""The local issuer, the embedded default: the gateway signs its own tokens.

Its signing keys (ES256 or RS256, setting ``auth.local_algorithm``) are created on first
run in ``<auth.key_dir>`` (default ``<data_dir>/auth``), in ``signing-keys.json`` readable by
the owner only. Each key has a ``kid`` (its RFC 7638 thumbprint); the first key signs, every
key listed verifies, so keys rotate without invalidating the tokens in flight
(``gateway auth-keys rotate``, later ``gateway auth-keys retire KID``). Several processes
(gunicorn workers, other machines sharing the folder) read the same file; one that meets an
unknown ``kid`` reads it again (at most every few seconds).

``gateway token --clinic C --user U --role R --ttl 8h`` prints a bearer token.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from auth.base import (
    Principal,
    TokenAuthenticator,
    claim,
    decode_jwt,
    unverified_header,
)
from auth.policy import normalize_roles
from auth.verified_tokens import VerifiedTokens
from gateway.errors import NotAuthenticated

logger = logging.getLogger(__name__)

KEYS_FILE = "signing-keys.json"
_RELOAD_INTERVAL = 5.0  # seconds between two reads of the key file for an unknown kid
_CHECK_INTERVAL = 5.0  # seconds between two looks at the key file's mtime (a retire in another process)


def key_dir(settings) -> Path:
    return settings.path("auth.key_dir", "auth")


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive lock on ``folder/.lock`` (processes creating or rotating keys at once)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_private(path: Path, data: dict) -> None:
    """Write JSON atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(eq=False)  # compared by identity: a key read again is another object (VerifiedTokens)
class SigningKey:
    kid: str
    alg: str
    private_pem: str
    created_at: int

    @functools.cached_property
    def private_key(self):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return load_pem_private_key(self.private_pem.encode(), password=None)

    @functools.cached_property
    def public_key(self):
        return self.private_key.public_key()

    def public_jwk(self) -> dict:
        import jwt

        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk = algorithm.to_jwk(self.public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_signing_key(alg: str) -> SigningKey:
    """A fresh private key; its kid is the RFC 7638 thumbprint of its public JWK."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    alg = alg.upper()
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        required = ("crv", "kty", "x", "y")
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        required = ("e", "kty", "n")
    else:
        raise ValueError(f"the local issuer signs with ES256 or RS256, not {alg}")
    jwk = jwt.get_algorithm_by_name(alg).to_jwk(private.public_key(), as_dict=True)
    thumbprint = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return SigningKey(_b64(hashlib.sha256(thumbprint.encode()).digest()), alg, pem, int(time.time()))


class LocalKeyStore:
    """The local issuer's keys in ``folder/signing-keys.json``: the first signs, all verify."""

    def __init__(self, folder: Path, *, algorithm: str = "ES256"):
        self.folder = Path(folder)
        self.path = self.folder / KEYS_FILE
        self.algorithm = algorithm.upper()
        self._keys: list[SigningKey] = []
        self._loaded_at = 0.0
        self._checked_at = 0.0
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._lock = threading.Lock()

    def _read(self) -> list[SigningKey]:
        data = json.loads(self.path.read_text())
        return [SigningKey(k["kid"], k["alg"], k["private_pem"], k.get("created_at", 0)) for k in data["keys"]]

    def _write(self, keys: list[SigningKey]) -> None:
        write_private(self.path, {"keys": [vars(k) for k in keys]})

    def load(self, *, create: bool = True) -> list[SigningKey]:
        """Read the keys, creating the first one when the file does not exist."""
        with self._lock:
            if not self.path.exists():
                if not create:
                    raise FileNotFoundError(self.path)
                with locked(self.folder):
                    if not self.path.exists():
                        key = new_signing_key(self.algorithm)
                        self._write([key])
                        logger.info("local issuer: created signing key %s (%s) in %s", key.kid, key.alg, self.path)
            self._stamp = self._file_stamp()
            self._keys = self._read()
            self._loaded_at = self._checked_at = time.monotonic()
            return list(self._keys)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    @property
    def keys(self) -> list[SigningKey]:
        return self._keys or self.load()

    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def find(self, kid: str) -> SigningKey | None:
        """The key named ``kid``. The file is read again when another process changed it (looked
        at every few seconds: a key retired elsewhere stops verifying within _CHECK_INTERVAL)
        or, at most every _RELOAD_INTERVAL, for a kid not known here."""
        now = time.monotonic()
        if self._keys and now - self._checked_at >= _CHECK_INTERVAL:
            self._checked_at = now
            if self._file_stamp() != self._stamp:
                self.load()
        for key in self.keys:
            if key.kid == kid:
                return key
        if time.monotonic() - self._loaded_at >= _RELOAD_INTERVAL:  # rotated by another process?
            self.load()
            return next((k for k in self._keys if k.kid == kid), None)
        return None

    def rotate(self, algorithm: str | None = None) -> SigningKey:
        """A new signing key first; the old ones keep verifying until retired."""
        with locked(self.folder):
            keys = self._read() if self.path.exists() else []
            key = new_signing_key(algorithm or self.algorithm)
            self._write([key, *keys])
        self.load()
        return key

    def retire(self, kid: str) -> None:
        """Stop accepting tokens signed with ``kid`` (not the signing key itself)."""
        with locked(self.folder):
            keys = self._read()
            if keys and keys[0].kid == kid:
                raise ValueError(f"{kid} is the signing key: rotate first")
            if not any(k.kid == kid for k in keys):
                raise KeyError(kid)
            self._write([k for k in keys if k.kid != kid])
        self.load()


def parse_ttl(text: str) -> int:
    """``8h``, ``30m``, ``2d``, ``90s`` or plain seconds → seconds."""
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if text and text[-1] in units:
            seconds = float(text[:-1]) * units[text[-1]]
        else:
            seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 8h, 30m, 2d, 3600)") from None
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return int(seconds)


class LocalIssuer(TokenAuthenticator):
    """Authentication provider ``local``: verifies (and issues) the gateway's own tokens."""

    def __init__(self, keys: LocalKeyStore, *, issuer: str, audience: str, leeway: int = 30,
                 patient_role: bool = False, max_ttl: int = 30 * 86400, cache_seconds: float = 60.0):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.patient_role = patient_role
        self.max_ttl = max_ttl
        self.verified = VerifiedTokens(max_age=cache_seconds)

    @classmethod
    def from_settings(cls, settings) -> "LocalIssuer":
        store = LocalKeyStore(key_dir(settings), algorithm=settings["auth.local_algorithm"])
        store.load()
        return cls(store, issuer=settings["auth.local_issuer"], audience=settings["auth.local_audience"],
                   leeway=settings["auth.leeway"], patient_role=settings["auth.patient_role"],
                   max_ttl=settings["auth.token_max_ttl"], cache_seconds=settings["auth.token_cache_seconds"])

    def issue(self, *, user: str, clinic: str, roles: Iterable[str], ttl: int = 8 * 3600,
              now: int | None = None, extra: dict | None = None) -> str:
        """A signed token for ``user`` of ``clinic`` with ``roles``, valid ``ttl`` seconds."""
        import jwt

        if not user or not clinic:
            raise ValueError("a token needs a user and a clinic")
        if ttl > self.max_ttl:
            raise ValueError(f"ttl {ttl} s is longer than auth.token_max_ttl ({self.max_ttl} s)")
        unknown = [r for r in roles if not normalize_roles([r], patient_role=True)]
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r} (roles: doctor, staff, lab, admin, support, patient)")
        key = self.keys.signing_key()
        now = int(time.time()) if now is None else now
        claims = {"iss": self.issuer, "aud": self.audience, "sub": user, "clinicId": clinic,
                  "roles": sorted(set(roles)), "iat": now, "nbf": now, "exp": now + ttl,
                  "jti": secrets.token_hex(8), **(extra or {})}
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})

    def verify(self, token: str) -> Principal:
        known = self.verified.get(token, self.keys.find)
        if known is not None:
            return known
        header = unverified_header(token)
        kid = header.get("kid")
        key = self.keys.find(str(kid)) if kid else None
        if key is None:
            raise NotAuthenticated(f"token signed with an unknown key id {str(kid)[:64]!r}" if kid
                                   else "token has no key id (kid)")
        if header.get("alg") != key.alg:
            raise NotAuthenticated(f"token algorithm {str(header.get('alg'))[:16]!r} does not fit the key it names")
        claims = decode_jwt(token, key.public_key, algorithms=[key.alg], issuer=self.issuer,
                            audience=self.audience, leeway=self.leeway)
        principal = principal_from_claims(claims, clinic_claim="clinicId", user_claim="sub", roles_claims=["roles"],
                                          patient_role=self.patient_role)
        self.verified.put(token, principal, str(kid), key, claims["exp"])
        return principal


def principal_from_claims(claims: dict, *, clinic_claim: str, user_claim: str, roles_claims: list[str],
                          patient_role: bool) -> Principal:
    """The principal a verified token names (shared by the local and OIDC providers)."""
    clinic = claim(claims, clinic_claim)
    if not isinstance(clinic, str) or not clinic.strip():
        raise NotAuthenticated(f"token has no {clinic_claim} claim: it cannot be bound to a clinic")
    user = claim(claims, user_claim)
    if not isinstance(user, str) or not user.strip():
        raise NotAuthenticated(f"token has no {user_claim} claim")
    names: list[str] = []
    for path in roles_claims:
        value = claim(claims, path)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, (list, tuple)):
            names.extend(str(v) for v in value)
    return Principal(user.strip(), clinic.strip(), normalize_roles(names, patient_role=patient_role),
                     claims=claims)
