"""Authentication providers, the authorization policy, shares, signed URLs and audit.

- :mod:`auth.base`: :class:`Principal`, the :class:`Authenticator` protocol, JWT helpers;
- :mod:`auth.local`, :mod:`auth.oidc`: the providers (entry-point group ``gateway.auth_providers``);
- :mod:`auth.policy`: roles × actions, in one table;
- :mod:`auth.access`: decisions on resources (tenant, role, shares);
- :mod:`auth.shares`, :mod:`auth.audit`, :mod:`auth.signing`: the services;
- :mod:`auth.credentials`: which credentials a request carries (signed URL, link, bearer token).

Nothing here knows the web framework: the HTTP endpoints of shares, signed URLs and the
audit log are in :mod:`proprietary`.
"""
from auth.base import (
    DEFAULT_CLINIC,
    EMBEDDED_PRINCIPAL,
    Authenticator,
    NotAuthenticated,
    Principal,
)

__all__ = ["DEFAULT_CLINIC", "EMBEDDED_PRINCIPAL", "Authenticator", "NotAuthenticated", "Principal"]
