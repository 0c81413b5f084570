"""Verified bearer tokens kept per process (auth.verified_tokens): one signature check per token,
never accepted longer than without the cache (exp, a retired or replaced key), never another
token's principal."""
from __future__ import annotations

import time

import jwt
import pytest

import auth.local
import auth.oidc
from auth.base import Principal
from auth.local import LocalIssuer
from auth.oidc import OidcAuthenticator
from auth.verified_tokens import VerifiedTokens
from gateway.config import load_settings
from gateway.errors import NotAuthenticated
from tests.idp import AUDIENCE, TestIdP


@pytest.fixture
def issuer(settings) -> LocalIssuer:
    return LocalIssuer.from_settings(settings)


@pytest.fixture
def checks(monkeypatch):
    """How many signatures were checked, by module."""
    counted = {"local": 0, "oidc": 0}
    for name, module in (("local", auth.local), ("oidc", auth.oidc)):
        def counting(*args, _name=name, _real=module.decode_jwt, **kwargs):
            counted[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, "decode_jwt", counting)
    return counted


def test_a_token_is_checked_once_and_each_token_keeps_its_own_principal(issuer, checks):
    a = issuer.issue(user="dr.a", clinic="A", roles=["doctor"])
    b = issuer.issue(user="dr.b", clinic="B", roles=["staff"])
    for _ in range(3):
        assert (issuer.verify(a).user_id, issuer.verify(a).clinic_id) == ("dr.a", "A")
        assert (issuer.verify(b).user_id, issuer.verify(b).clinic_id) == ("dr.b", "B")
    assert checks["local"] == 2


def test_refusals_are_not_kept(issuer, checks):
    token = issuer.issue(user="u", clinic="A", roles=["doctor"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(NotAuthenticated):
            issuer.verify(forged)
    assert checks["local"] == 2
    assert len(issuer.verified) == 0


def test_a_key_retired_by_another_process_ends_its_cached_tokens(settings, issuer):
    old_token = issuer.issue(user="u", clinic="A", roles=["doctor"])
    worker = LocalIssuer.from_settings(settings)  # a gunicorn worker: it verified the token already
    assert worker.verify(old_token).user_id == "u"
    old_kid = issuer.keys.signing_key().kid
    issuer.keys.rotate()
    issuer.keys.retire(old_kid)  # `gateway auth-keys retire`, another process
    assert worker.verify(old_token).user_id == "u"  # within the check interval: not looked at yet
    worker.keys._checked_at -= 60  # the worker looked at the key file a while ago
    with pytest.raises(NotAuthenticated, match="unknown key id"):
        worker.verify(old_token)


def test_an_entry_lasts_until_exp_or_max_age_whichever_is_first():
    now = [1000.0]
    tokens = VerifiedTokens(max_age=60, clock=lambda: now[0])
    key = object()
    principal = Principal("u", "A")
    tokens.put("short", principal, "k1", key, exp=1010)
    tokens.put("long", principal, "k1", key, exp=5000)
    assert tokens.get("short", {"k1": key}.get) is principal
    now[0] = 1010
    assert tokens.get("short", {"k1": key}.get) is None  # expired: a fresh check decides (with leeway)
    assert tokens.get("long", {"k1": key}.get) is principal
    now[0] = 1060
    assert tokens.get("long", {"k1": key}.get) is None  # max_age
    assert len(tokens) == 0


def test_an_entry_needs_the_same_key_object():
    tokens = VerifiedTokens(clock=lambda: 0.0)
    key = object()
    tokens.put("t", Principal("u", "A"), "k1", key, exp=100)
    assert tokens.get("t", {"k1": object()}.get) is None  # the same kid, read again: checked again
    assert tokens.get("t", {"k1": key}.get) is None  # and the entry is gone


def test_bounded_and_off():
    tokens = VerifiedTokens(max_entries=2, clock=lambda: 0.0)
    key = object()
    for n in range(3):
        tokens.put(f"t{n}", Principal("u", "A"), "k", key, exp=100)
    assert len(tokens) == 2 and tokens.get("t0", lambda _kid: key) is None
    off = VerifiedTokens(max_age=0)
    off.put("t", Principal("u", "A"), "k", key, exp=time.time() + 100)
    assert len(off) == 0


def test_the_setting_turns_it_off(tmp_path, checks):
    settings = load_settings(overrides={"storage.data_dir": str(tmp_path / "data"), "auth.token_cache_seconds": 0},
                             environ={})
    issuer = LocalIssuer.from_settings(settings)
    token = issuer.issue(user="u", clinic="A", roles=["doctor"])
    issuer.verify(token)
    issuer.verify(token)
    assert checks["local"] == 2


def test_oidc_tokens_of_a_retired_key_are_refused_once_the_jwks_is_fetched_again(tmp_path, checks):
    with TestIdP("RS256") as idp:
        settings = load_settings(overrides={
            "storage.data_dir": str(tmp_path / "data"), "auth.provider": "oidc", "auth.oidc_issuer": idp.issuer,
            "auth.oidc_audience": AUDIENCE}, environ={})
        authenticator = OidcAuthenticator.from_settings(settings)
        first = idp.keys[0]
        token = idp.token(key=first)
        assert authenticator.verify(token).user_id == authenticator.verify(token).user_id
        assert checks["oidc"] == 1
        authenticator.jwks._fetched_at -= 60
        second = idp.rotate("RS256")  # the first key leaves the JWKS
        assert authenticator.verify(idp.token(key=second, sub="after")).user_id == "after"  # JWKS fetched again
        with pytest.raises(NotAuthenticated, match="unknown key id"):
            authenticator.verify(token)
        assert jwt.get_unverified_header(token)["kid"] == first.kid
