"""The authorization policy: which role may do which action, in one table.

Actions:

- ``read``: search (QIDO-RS, C-FIND) and retrieve (WADO-RS, rendered, thumbnails, C-MOVE, C-GET);
- ``write``: store (STOW-RS, C-STORE, imports);
- ``delete``: delete studies, series, instances;
- ``share``: create, list and revoke shares of the clinic's studies;
- ``admin``: the clinic's audit log and job queue (forwards).

A cell of :data:`POLICY` is the scope an action has for a role:

- ``CLINIC``: on the principal's own clinic, and (``read`` only) on what is shared with it;
- ``SHARED``: only on what is shared with the principal (a patient, a link);
- absent: never (403, whatever the resource).

Whatever the role, a study of another clinic that is not shared with the principal answers
404, exactly like a study that does not exist: existence is not leaked. Writes, deletes and
shares act on the principal's own clinic only; shares grant ``read`` (``view``, and
``download`` of the original instances).
"""
from __future__ import annotations

import logging

from auth.base import Principal
from gateway.errors import NotAuthorized

logger = logging.getLogger(__name__)

READ, WRITE, DELETE, SHARE, ADMIN = "read", "write", "delete", "share", "admin"
ACTIONS = (READ, WRITE, DELETE, SHARE, ADMIN)
CLINIC, SHARED = "clinic", "shared"

# The one table. Rows are roles (tokens' role claims); "dimse", "link" and "system" are the
# roles of DIMSE peers, link-share holders and the gateway's own jobs.
POLICY: dict[str, dict[str, str]] = {
    "doctor":  {READ: CLINIC, WRITE: CLINIC, DELETE: CLINIC, SHARE: CLINIC},
    "staff":   {READ: CLINIC, WRITE: CLINIC},
    "lab":     {READ: CLINIC, WRITE: CLINIC},
    "admin":   {READ: CLINIC, WRITE: CLINIC, DELETE: CLINIC, SHARE: CLINIC, ADMIN: CLINIC},
    "support": {ADMIN: CLINIC},
    "patient": {READ: SHARED},  # only when auth.patient_role is on
    "dimse":   {READ: CLINIC, WRITE: CLINIC},  # further limited by each peer's allow list
    "link":    {READ: SHARED},
    "system":  {READ: CLINIC, WRITE: CLINIC, DELETE: CLINIC},
}
# Roles a token may carry (the others are the gateway's own).
USER_ROLES = ("doctor", "staff", "lab", "admin", "support", "patient")
# Other names identity providers use for the same roles.
ROLE_ALIASES = {"dentist": "doctor"}
OFF_BY_DEFAULT = frozenset({"patient"})


def normalize_roles(names, *, patient_role: bool = False) -> frozenset[str]:
    """Token role names → the policy's user roles (aliases mapped, unknown and disabled dropped)."""
    roles = set()
    for name in names or ():
        role = ROLE_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
        if role in USER_ROLES and (patient_role or role not in OFF_BY_DEFAULT):
            roles.add(role)
    return frozenset(roles)


def scope(principal: Principal, action: str) -> str | None:
    """The widest scope any of the principal's roles gives the action: CLINIC, SHARED or None."""
    found = None
    for role in principal.roles:
        cell = POLICY.get(role, {}).get(action)
        if cell == CLINIC:
            return CLINIC
        if cell == SHARED:
            found = SHARED
    return found


def allows(principal: Principal, action: str, *, own_clinic: bool = True) -> bool:
    """May the principal do ``action`` on its own clinic (``own_clinic``) or on what is shared?"""
    cell = scope(principal, action)
    return cell == CLINIC if own_clinic else cell is not None


def require(principal: Principal, action: str) -> str:
    """The principal's scope for ``action``; :class:`NotAuthorized` (403) when it has none."""
    cell = scope(principal, action)
    if cell is None:
        roles = ", ".join(sorted(principal.roles)) or "none"
        raise NotAuthorized(f"{action} is not allowed for roles: {roles}", action=action)
    return cell


def markdown_table() -> str:
    """The policy as the Markdown table of the README (kept equal by a test)."""
    marks = {CLINIC: "yes", SHARED: "shared only", None: "-"}
    lines = ["| role | " + " | ".join(ACTIONS) + " |", "|---|" + "---|" * len(ACTIONS)]
    for role, cells in POLICY.items():
        lines.append(f"| `{role}` | " + " | ".join(marks[cells.get(a)] for a in ACTIONS) + " |")
    return "\n".join(lines)


__all__ = ["ACTIONS", "ADMIN", "CLINIC", "DELETE", "POLICY", "READ", "ROLE_ALIASES", "SHARE", "SHARED",
           "USER_ROLES", "WRITE", "allows", "markdown_table", "normalize_roles", "require", "scope"]
