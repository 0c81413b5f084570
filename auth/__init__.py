"""Authentication providers, the authorization policy, signed URLs and audit."""
from auth.base import DEFAULT_CLINIC, EMBEDDED_PRINCIPAL, Principal

__all__ = ["DEFAULT_CLINIC", "EMBEDDED_PRINCIPAL", "Principal"]
