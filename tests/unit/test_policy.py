"""The policy table: its cells, role names, and the README's copy of it."""
from __future__ import annotations

from pathlib import Path

import pytest

from auth import policy
from auth.base import Principal
from gateway.errors import NotAuthorized

README = Path(__file__).resolve().parents[2] / "README.md"


def who(*roles: str, kind: str = "user") -> Principal:
    return Principal("u", "A", frozenset(roles), kind=kind)


def test_every_role_and_action_is_known():
    assert set(policy.USER_ROLES) <= set(policy.POLICY)
    for role, cells in policy.POLICY.items():
        assert set(cells) <= set(policy.ACTIONS), role
        assert set(cells.values()) <= {policy.CLINIC, policy.SHARED}, role


@pytest.mark.parametrize("role, expected", [
    ("doctor", {"read", "write", "delete", "share"}),
    ("staff", {"read", "write"}),
    ("lab", {"read", "write"}),
    ("admin", {"read", "write", "delete", "share", "admin"}),
    ("support", {"admin"}),
    ("patient", {"read"}),
])
def test_role_actions(role, expected):
    assert {a for a in policy.ACTIONS if policy.scope(who(role), a)} == expected


def test_patient_and_link_read_only_what_is_shared():
    assert policy.scope(who("patient"), "read") == policy.SHARED
    assert policy.scope(who("link", kind="link"), "read") == policy.SHARED
    assert not policy.allows(who("patient"), "read")  # not its clinic's studies
    assert policy.allows(who("patient"), "read", own_clinic=False)


def test_the_widest_role_wins():
    assert policy.scope(who("patient", "staff"), "read") == policy.CLINIC
    assert policy.require(who("support", "doctor"), "delete") == policy.CLINIC


def test_require_names_the_refusal():
    with pytest.raises(NotAuthorized, match="delete is not allowed for roles: lab, staff") as info:
        policy.require(who("staff", "lab"), "delete")
    assert info.value.http_status == 403 and info.value.dimse_status == 0x0124
    with pytest.raises(NotAuthorized, match="roles: none"):
        policy.require(who(), "read")


def test_normalize_roles():
    assert policy.normalize_roles(["Dentist", "ADMIN", "uma_authorization", "patient"]) == {"doctor", "admin"}
    assert policy.normalize_roles(["patient"], patient_role=True) == {"patient"}
    assert policy.normalize_roles(["dimse", "system", "link"]) == frozenset()  # the gateway's own: never from tokens


def test_readme_has_the_table():
    assert policy.markdown_table() in README.read_text(), \
        "README's roles × actions table differs from auth.policy.markdown_table(); paste it again"
