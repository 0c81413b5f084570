"""Who is asking: the principal every request carries through every front door."""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CLINIC = "default"


@dataclass(frozen=True)
class Principal:
    user_id: str
    clinic_id: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def has_role(self, role: str) -> bool:
        return role in self.roles


# Until authentication providers exist (see the identity issue), every request of the
# embedded gateway acts for this one clinic.
EMBEDDED_PRINCIPAL = Principal("embedded", DEFAULT_CLINIC, frozenset({"admin"}))
