"""Which credentials a request carries, and the principal they establish.

Every HTTP request is authenticated (by the app, :func:`gateway.app.create_app`, before any
view runs) except the probes, the OpenAPI document and its browsable page, and CORS
preflights. What counts as credentials, in order:

1. a signed URL (``gw_sig`` and its companions in the query, :mod:`auth.signing`);
2. ``Authorization: Bearer <token>``: a link share's token (``gwl_...``), else a JWT checked by
   the provider of ``auth.provider`` (entry-point group ``gateway.auth_providers``);
3. ``?share=<link token>`` when no Authorization header is sent (a plain link).

No credentials or bad ones raise :class:`NotAuthenticated` (401 with ``WWW-Authenticate:
Bearer``) and are audited (``login``, ``denied``). There is no anonymous access: an open
server cannot be configured. Requests are read duck-typed (``method``, ``path``, ``args``,
``headers``), so nothing here depends on the web framework.
"""
from __future__ import annotations

import logging
import re
from importlib.metadata import entry_points

from auth.audit import DENIED
from auth.base import Authenticator, Principal, bearer_token
from auth.shares import is_link_token
from auth.signing import PARAMS as SIGNED_URL_PARAMS
from auth.signing import SIGNATURE_PARAM, UrlSigner, signed_principal
from gateway.errors import NotAuthenticated

logger = logging.getLogger(__name__)

GROUP = "gateway.auth_providers"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/readyz/dimse", "/api/openapi.json", "/favicon.ico",
                          "/metrics"})  # /metrics: its own check (metrics.token, metrics.allow)
PUBLIC_PREFIXES = ("/api/docs",)
# Query parameters that carry credentials: the front doors ignore them.
AUTH_PARAMS = frozenset({"share", *SIGNED_URL_PARAMS})
_SECRET_PARAMS = re.compile(r"((?:^|[?&])(?:share|gw_sig)=)[^&]*")


def redact(path: str) -> str:
    """A request path for logs: link tokens and URL signatures replaced by ***."""
    return _SECRET_PARAMS.sub(r"\1***", path)


def provider_class(name: str) -> type:
    """The provider class named ``name``; :class:`LookupError` naming the known ones."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(sorted(ep.name for ep in entry_points(group=GROUP))) or "none (is the package installed?)"
        raise LookupError(f"auth.provider: no provider named {name!r} in entry-point group {GROUP}; known: {known}")
    return matches[0].load()


def create_provider(settings) -> Authenticator:
    return provider_class(settings["auth.provider"]).from_settings(settings)


class RequestAuthenticator:
    """The chain above, shared by every request of an app."""

    def __init__(self, provider: Authenticator, shares, signer: UrlSigner, audit):
        self.provider = provider
        self.shares = shares
        self.signer = signer
        self.audit = audit

    def authenticate(self, req) -> Principal:
        try:
            if SIGNATURE_PARAM in req.args:
                values = self.signer.verify(req.method, req.path, req.args.to_dict(flat=True))
                return signed_principal(values, self.shares)
            link = req.args.get("share")
            if link and not req.headers.get("Authorization"):
                return self.shares.link_principal(link)
            token = bearer_token(req)
            if is_link_token(token):
                return self.shares.link_principal(token)
            return self.provider.authenticate(req)
        except NotAuthenticated as exc:
            self.audit.record("login", DENIED, resource=redact(req.path), detail=exc.message)
            raise
