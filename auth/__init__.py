"""Authentication providers, the authorization policy, shares, signed URLs and audit.

- :mod:`auth.base`: :class:`Principal`, the :class:`Authenticator` protocol, JWT helpers;
- :mod:`auth.local`, :mod:`auth.oidc`: the providers (entry-point group ``gateway.auth_providers``);
- :mod:`auth.policy`: roles × actions, in one table;
- :mod:`auth.access`: decisions on resources (tenant, role, shares);
- :mod:`auth.shares`, :mod:`auth.audit`, :mod:`auth.signing`: the services;
- :mod:`auth.web`, :mod:`auth.views`: the HTTP side (authentication of every request, the API).
"""
from auth.base import (
    DEFAULT_CLINIC,
    EMBEDDED_PRINCIPAL,
    Authenticator,
    NotAuthenticated,
    Principal,
)

__all__ = ["DEFAULT_CLINIC", "EMBEDDED_PRINCIPAL", "Authenticator", "NotAuthenticated", "Principal"]
