"""The local issuer: keys made on first run, tokens it signs, and the tokens it refuses."""
from __future__ import annotations

import json
import os
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from auth.local import LocalIssuer, LocalKeyStore, new_signing_key, parse_ttl
from gateway.errors import NotAuthenticated
from tests.idp import hmac_token, tampered_token, unsigned_token


@pytest.fixture
def issuer(settings) -> LocalIssuer:
    return LocalIssuer.from_settings(settings)


def claims(issuer: LocalIssuer, **changes) -> dict:
    now = int(time.time())
    base = {"iss": issuer.issuer, "aud": issuer.audience, "sub": "u1", "clinicId": "A", "roles": ["doctor"],
            "iat": now, "nbf": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(issuer: LocalIssuer, **changes) -> str:
    key = issuer.keys.signing_key()
    return jwt.encode(claims(issuer, **changes), key.private_key, algorithm=key.alg, headers={"kid": key.kid})


def test_keys_are_created_once_owner_only(settings, issuer):
    path = settings.data_dir / "auth" / "signing-keys.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    [key] = json.loads(path.read_text())["keys"]
    assert key["alg"] == "ES256"
    again = LocalIssuer.from_settings(settings)
    assert again.keys.signing_key().kid == key["kid"]


def test_rs256_keys(tmp_path):
    store = LocalKeyStore(tmp_path / "k", algorithm="RS256")
    issuer = LocalIssuer(store, issuer="i", audience="a")
    token = issuer.issue(user="u", clinic="c", roles=["staff"])
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    principal = issuer.verify(token)
    assert (principal.user_id, principal.clinic_id, principal.roles) == ("u", "c", frozenset({"staff"}))


def test_issue_and_verify(issuer):
    token = issuer.issue(user="dr.kim", clinic="A", roles=["doctor", "dentist", "admin"], ttl=3600)
    header = jwt.get_unverified_header(token)
    assert header["kid"] == issuer.keys.signing_key().kid and header["alg"] == "ES256"
    principal = issuer.verify(token)
    assert principal.user_id == "dr.kim" and principal.clinic_id == "A"
    assert principal.roles == frozenset({"doctor", "admin"})
    assert principal.kind == "user"


def test_issue_refuses_unknown_roles_and_long_ttls(issuer):
    with pytest.raises(ValueError, match="unknown role"):
        issuer.issue(user="u", clinic="A", roles=["root"])
    with pytest.raises(ValueError, match="token_max_ttl"):
        issuer.issue(user="u", clinic="A", roles=["doctor"], ttl=10**9)


@pytest.mark.parametrize("text, seconds", [("8h", 28800), ("30m", 1800), ("2d", 172800), ("90s", 90), ("60", 60)])
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


def test_patient_role_is_off_by_default(issuer, settings):
    token = issuer.issue(user="p", clinic="A", roles=["patient"])
    assert issuer.verify(token).roles == frozenset()
    from gateway.config import load_settings

    on = load_settings(overrides={"storage.data_dir": str(settings.data_dir), "auth.patient_role": True},
                       environ={})
    assert LocalIssuer.from_settings(on).verify(token).roles == frozenset({"patient"})


@pytest.mark.parametrize("attack, message", [
    ("forged-claims", "signature"),
    ("other-key-same-kid", "signature"),
    ("alg-none", "alg none"),
    ("hs256-with-public-key", "does not fit"),
    ("unknown-kid", "unknown key id"),
    ("no-kid", "no key id"),
    ("wrong-issuer", "issuer"),
    ("wrong-audience", "audience"),
    ("expired", "expired"),
    ("not-yet-valid", "not yet valid"),
    ("no-clinic", "clinicId"),
    ("no-exp", "exp"),
    ("garbage", "malformed"),
])
def test_attacks_are_refused(issuer, attack, message):
    key = issuer.keys.signing_key()
    attacker = new_signing_key("ES256")
    now = int(time.time())
    token = {
        "forged-claims": lambda: tampered_token(issuer.issue(user="u1", clinic="A", roles=["staff"]),
                                                clinicId="B", roles=["admin"]),
        "other-key-same-kid": lambda: jwt.encode(claims(issuer), attacker.private_key, algorithm="ES256",
                                                 headers={"kid": key.kid}),
        "alg-none": lambda: unsigned_token(claims(issuer), key.kid),
        "hs256-with-public-key": lambda: hmac_token(
            claims(issuer), key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), key.kid),
        "unknown-kid": lambda: jwt.encode(claims(issuer), attacker.private_key, algorithm="ES256",
                                          headers={"kid": attacker.kid}),
        "no-kid": lambda: jwt.encode(claims(issuer), key.private_key, algorithm="ES256"),
        "wrong-issuer": lambda: signed(issuer, iss="https://evil.example"),
        "wrong-audience": lambda: signed(issuer, aud="another-service"),
        "expired": lambda: signed(issuer, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not-yet-valid": lambda: signed(issuer, nbf=now + 3600, exp=now + 7200),
        "no-clinic": lambda: signed(issuer, clinicId=None),
        "no-exp": lambda: signed(issuer, exp=None),
        "garbage": lambda: "not-a-token",
    }[attack]()
    with pytest.raises(NotAuthenticated, match=message):
        issuer.verify(token)


def test_small_clock_skew_is_tolerated(issuer):
    now = int(time.time())
    assert issuer.verify(signed(issuer, iat=now + 10, nbf=now + 10)).user_id == "u1"  # auth.leeway = 30 s


def test_rotation_keeps_old_tokens_until_retired(settings, issuer):
    old_kid = issuer.keys.signing_key().kid
    old_token = issuer.issue(user="u", clinic="A", roles=["doctor"])
    other_process = LocalIssuer.from_settings(settings)  # another worker, loaded before the rotation
    new_key = issuer.keys.rotate()
    new_token = issuer.issue(user="u", clinic="A", roles=["doctor"])
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid != old_kid
    assert issuer.verify(old_token).user_id == "u"
    other_process.keys._loaded_at -= 60  # its last read of the key file was a while ago
    assert other_process.verify(new_token).user_id == "u"  # unknown kid: it reads the file again
    with pytest.raises(ValueError, match="signing key"):
        issuer.keys.retire(new_key.kid)
    issuer.keys.retire(old_kid)
    with pytest.raises(NotAuthenticated, match="unknown key id"):
        issuer.verify(old_token)


def test_providers_are_entry_points():
    from importlib.metadata import entry_points

    from auth.base import Authenticator
    from auth.oidc import OidcAuthenticator

    found = {ep.name: ep.load() for ep in entry_points(group="gateway.auth_providers")}
    assert found["local"] is LocalIssuer and found["oidc"] is OidcAuthenticator
    for cls in found.values():
        assert callable(getattr(cls, "from_settings", None)) and issubclass(cls, Authenticator)
