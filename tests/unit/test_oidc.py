"""The OIDC provider against a real discovery document and JWKS served over HTTP by the test
(:class:`tests.idp.TestIdP`, keys generated here): claims, key rotation, and attacks."""
from __future__ import annotations

import time

import pytest

from auth.oidc import JwksCache, OidcAuthenticator, fetch_json
from gateway.config import SettingsError, load_settings
from gateway.errors import BackendUnavailable, NotAuthenticated
from storage.records import AuditQuery
from tests.idp import AUDIENCE, Key, TestIdP, hmac_token, tampered_token, unsigned_token


@pytest.fixture
def idp():
    with TestIdP("RS256", "ES256") as provider:
        yield provider


def oidc_settings(tmp_path, idp, **extra):
    return load_settings(overrides={
        "storage.data_dir": str(tmp_path / "data"), "auth.provider": "oidc", "auth.oidc_issuer": idp.issuer,
        "auth.oidc_audience": AUDIENCE, "auth.oidc_client_id": AUDIENCE, **extra}, environ={})


@pytest.fixture
def authenticator(tmp_path, idp) -> OidcAuthenticator:
    return OidcAuthenticator.from_settings(oidc_settings(tmp_path, idp))


def test_discovery_and_claims(authenticator, idp):
    token = idp.token(sub="dr.kim", clinic="A", roles=["dentist", "offline_access"], client_roles=["admin"])
    principal = authenticator.verify(token)
    assert (principal.user_id, principal.clinic_id) == ("dr.kim", "A")
    assert principal.roles == frozenset({"doctor", "admin"})  # realm + client roles, alias, unknown dropped
    assert idp.jwks_requests == 1
    es256 = idp.token(key=idp.keys[1], sub="lab.tech", clinic="LAB", roles=["lab"])
    assert authenticator.verify(es256).roles == frozenset({"lab"})
    assert idp.jwks_requests == 1  # cached


def test_claim_mapping_from_settings(tmp_path, idp):
    auth = OidcAuthenticator.from_settings(oidc_settings(
        tmp_path, idp, **{"auth.oidc_clinic_claim": "tenant.id", "auth.oidc_user_claim": "preferred_username",
                          "auth.oidc_roles_claims": "groups"}))
    token = idp.sign(idp.claims(sub="uuid-1", clinic=None, roles=["admin"], tenant={"id": "C9"},
                                preferred_username="kim", groups=["staff"]))
    principal = auth.verify(token)
    assert (principal.user_id, principal.clinic_id, principal.roles) == ("kim", "C9", frozenset({"staff"}))


def test_configured_jwks_url_skips_discovery(tmp_path, idp):
    auth = OidcAuthenticator.from_settings(oidc_settings(tmp_path, idp, **{"auth.oidc_jwks_url": idp.jwks_url,
                                                                           "auth.oidc_issuer": idp.issuer}))
    assert auth.verify(idp.token()).clinic_id == "A"


def test_key_rotation_mid_run(authenticator, idp):
    first = idp.keys[0]
    assert authenticator.verify(idp.token(key=first)).user_id == "dr.kim"
    assert idp.jwks_requests == 1
    authenticator.jwks._fetched_at -= 60  # the cache is older than auth.oidc_jwks_min_refresh (30 s)
    second = idp.rotate("RS256")  # the provider now signs with a new key; the first one is gone
    assert authenticator.verify(idp.token(key=second, sub="after")).user_id == "after"  # unknown kid: refetched
    assert idp.jwks_requests == 2
    with pytest.raises(NotAuthenticated, match="unknown key id"):
        authenticator.verify(idp.token(key=first))


def test_unknown_kid_refetch_is_rate_limited(idp):
    now = [1000.0]
    cache = JwksCache(lambda: idp.jwks_url, min_refresh=30, max_age=3600, clock=lambda: now[0])
    assert cache.get(idp.keys[0].kid) is not None
    assert idp.jwks_requests == 1
    for _ in range(20):  # a flood of made-up kids
        assert cache.get("made-up") is None
    assert idp.jwks_requests == 1  # within min_refresh of the last fetch: none
    now[0] += 31
    assert cache.get("made-up") is None
    assert idp.jwks_requests == 2  # one refetch, then quiet again
    assert cache.get("made-up-2") is None
    assert idp.jwks_requests == 2
    now[0] += 3600
    assert cache.get(idp.keys[0].kid) is not None  # older than max_age: fetched again
    assert idp.jwks_requests == 3


def test_hmac_keys_in_the_jwks_are_ignored(authenticator, idp):
    idp.extra_jwks.append({"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "alg": "HS256"})
    with pytest.raises(NotAuthenticated):
        authenticator.verify(hmac_token(idp.claims(), b"secret-secret-secret-secret", "shared"))


@pytest.mark.parametrize("attack, message", [
    ("alg-none", "alg none"),
    ("hs256-with-public-key", "not allowed"),
    ("es256-token-with-rsa-key", "does not fit"),
    ("forged-claims", "signature"),
    ("signed-by-another-key-same-kid", "signature"),
    ("unknown-kid", "unknown key id"),
    ("wrong-issuer", "issuer"),
    ("wrong-audience", "audience"),
    ("expired", "expired"),
    ("not-yet-valid", "not yet valid"),
    ("no-clinic", "clinicId"),
])
def test_attacks_are_refused(authenticator, idp, attack, message):
    rsa, ec = idp.keys
    now = int(time.time())
    impostor = Key("RS256", kid=rsa.kid)
    token = {
        "alg-none": lambda: unsigned_token(idp.claims(), rsa.kid),
        "hs256-with-public-key": lambda: hmac_token(idp.claims(), rsa.public_pem(), rsa.kid),
        "es256-token-with-rsa-key": lambda: idp.sign(idp.claims(), Key("ES256", kid=rsa.kid)),
        "forged-claims": lambda: tampered_token(idp.token(clinic="A"), clinicId="B"),
        "signed-by-another-key-same-kid": lambda: idp.sign(idp.claims(), impostor),
        "unknown-kid": lambda: idp.sign(idp.claims(), Key("RS256")),
        "wrong-issuer": lambda: idp.sign(idp.claims(iss="https://evil.example/realms/dental")),
        "wrong-audience": lambda: idp.sign(idp.claims(aud="account")),
        "expired": lambda: idp.sign(idp.claims(iat=now - 7200, nbf=now - 7200, exp=now - 600)),
        "not-yet-valid": lambda: idp.sign(idp.claims(nbf=now + 600, exp=now + 1200)),
        "no-clinic": lambda: idp.token(clinic=None),
    }[attack]()
    with pytest.raises(NotAuthenticated, match=message):
        authenticator.verify(token)


def test_settings_refuse_symmetric_algorithms(tmp_path, idp):
    with pytest.raises(SettingsError, match="asymmetric"):
        oidc_settings(tmp_path, idp, **{"auth.oidc_algorithms": "RS256,HS256"})
    with pytest.raises(SettingsError, match="none"):
        oidc_settings(tmp_path, idp, **{"auth.oidc_algorithms": "none"})


def test_missing_settings_are_named(tmp_path, idp):
    with pytest.raises(ValueError, match="oidc_audience"):
        OidcAuthenticator.from_settings(oidc_settings(tmp_path, idp, **{"auth.oidc_audience": ""}))


def test_unreachable_provider_is_503_not_401(tmp_path):
    settings = load_settings(overrides={"storage.data_dir": str(tmp_path), "auth.provider": "oidc",
                                        "auth.oidc_issuer": "http://127.0.0.1:9/realms/x",
                                        "auth.oidc_audience": "a", "auth.oidc_http_timeout": 2}, environ={})
    auth = OidcAuthenticator.from_settings(settings)
    with TestIdP() as other:
        token = other.token()
    with pytest.raises(BackendUnavailable):
        auth.verify(token)


def test_issuer_with_a_trailing_slash_is_the_same(tmp_path, idp):
    auth = OidcAuthenticator.from_settings(oidc_settings(tmp_path, idp,
                                                         **{"auth.oidc_issuer": idp.url + "/realms/dental/"}))
    assert auth.verify(idp.token()).clinic_id == "A"  # a trailing slash is the same issuer
    assert fetch_json(idp.issuer + "/.well-known/openid-configuration", 5)["issuer"] == idp.issuer


def test_the_app_answers_401_and_audits(tmp_path, idp):
    """Through the app: an OIDC token works on DICOMweb; a bad one is a 401 with a challenge."""
    from gateway.app import create_app

    app = create_app(oidc_settings(tmp_path, idp, **{"log.level": "warning"}))
    try:
        client = app.test_client()
        ok = client.get("/dicom-web/studies", headers={"Authorization": f"Bearer {idp.token()}"})
        assert ok.status_code == 200 and ok.get_json() == []
        bad = client.get("/dicom-web/studies", headers={
            "Authorization": f"Bearer {unsigned_token(idp.claims(), idp.keys[0].kid)}", "X-Request-ID": "oidc-none"})
        assert bad.status_code == 401
        assert bad.headers["WWW-Authenticate"].startswith('Bearer realm="dental-pacs-gateway", error="invalid_token"')
        assert bad.get_json()["code"] == 401
        [record] = [r for r in app.extensions["gateway"].audit.search(AuditQuery())
                    if r.request_id == "oidc-none"]
        assert (record.action, record.outcome, record.user_id) == ("login", "denied", None)
        assert "alg none" in record.detail
    finally:
        app.extensions["gateway"].close()
