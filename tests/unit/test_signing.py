"""Signed URLs: HMAC over method, path, parameters and expiry, with key ids and rotation."""
from __future__ import annotations

import base64

import pytest

from auth.base import Principal
from auth.signing import UrlSigner, generated_keys, parse_keys, rotate_generated_keys
from gateway.errors import NotAuthenticated

KEY1 = base64.b64encode(b"k" * 32).decode()
KEY2 = base64.b64encode(b"z" * 32).decode()
DOCTOR = Principal("dr", "A", frozenset({"doctor"}))
PATH = "/dicom-web/studies/1.2/thumbnail"


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(parse_keys(f"k1:{KEY1}"), default_ttl=600, max_ttl=3600)


def test_round_trip(signer):
    query = signer.sign("GET", PATH, DOCTOR, params={"viewport": "64,64"}, now=1000)
    assert query["gw_exp"] == "1600" and query["gw_kid"] == "k1" and query["viewport"] == "64,64"
    values = signer.verify("GET", PATH, query, now=1599)
    assert (values["gw_sub"], values["gw_clinic"], values["gw_roles"]) == ("dr", "A", "doctor")


@pytest.mark.parametrize("change", ["method", "path", "param", "added-param", "clinic", "roles", "expiry", "sig",
                                    "kid"])
def test_any_change_is_refused(signer, change):
    query = signer.sign("GET", PATH, DOCTOR, params={"viewport": "64,64"}, now=1000)
    method, path = "GET", PATH
    if change == "method":
        method = "DELETE"
    elif change == "path":
        path = "/dicom-web/studies/1.3/thumbnail"
    elif change == "param":
        query["viewport"] = "4096,4096"
    elif change == "added-param":
        query["quality"] = "1"
    elif change == "clinic":
        query["gw_clinic"] = "B"
    elif change == "roles":
        query["gw_roles"] = "admin"
    elif change == "expiry":
        query["gw_exp"] = "999999"
    elif change == "sig":
        query["gw_sig"] = query["gw_sig"][:-2] + "AA"
    elif change == "kid":
        query["gw_kid"] = "k9"
    with pytest.raises(NotAuthenticated):
        signer.verify(method, path, query, now=1001)


def test_expired(signer):
    query = signer.sign("GET", PATH, DOCTOR, ttl=60, now=1000)
    signer.verify("GET", PATH, query, now=1059)
    with pytest.raises(NotAuthenticated, match="expired"):
        signer.verify("GET", PATH, query, now=1060)


def test_ttl_is_capped(signer):
    query = signer.sign("GET", PATH, DOCTOR, ttl=10**6, now=0)
    assert query["gw_exp"] == "3600"


def test_rotation(signer):
    old = signer.sign("GET", PATH, DOCTOR, now=1000)
    rotated = UrlSigner(parse_keys(f"k2:{KEY2},k1:{KEY1}"))
    new = rotated.sign("GET", PATH, DOCTOR, now=1000)
    assert new["gw_kid"] == "k2"
    rotated.verify("GET", PATH, old, now=1001)  # the old key still verifies
    retired = UrlSigner(parse_keys(f"k2:{KEY2}"))
    with pytest.raises(NotAuthenticated, match="unknown or retired"):
        retired.verify("GET", PATH, old, now=1001)


def test_link_principal_is_signed_by_share(signer):
    link = Principal("link:s1", "A", frozenset({"link"}), kind="link", share_id="s1")
    query = signer.sign("GET", PATH, link, now=0)
    assert query["gw_share"] == "s1" and "gw_sub" not in query


def test_key_settings_are_checked():
    with pytest.raises(ValueError, match="shorter"):
        parse_keys("k1:" + base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="kid:base64key"):
        parse_keys("just-a-key")


def test_generated_keys_and_their_rotation(tmp_path):
    first = generated_keys(tmp_path)
    assert generated_keys(tmp_path) == first
    kid = rotate_generated_keys(tmp_path)
    keys = generated_keys(tmp_path)
    assert keys[0][0] == kid and keys[1] == first[0]
