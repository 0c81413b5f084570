"""Requests through a reverse proxy or load balancer: ``X-Forwarded-For``, ``-Proto``,
``-Host`` and ``-Port`` are believed only from the addresses of ``server.trusted_proxies``
(addresses or CIDR networks); from anyone else they are ignored, so a client cannot forge its
audit address or the host of the URLs the gateway hands out.

werkzeug's ``ProxyFix`` trusts a fixed number of hops from whoever connects; here trust
depends on who connects, and the client address is the right-most ``X-Forwarded-For`` entry
that is not itself a trusted proxy (chains of proxies work).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def parse_networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of ``server.trusted_proxies``; ValueError naming a bad entry."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return networks


def address_in(address: str, networks) -> bool:
    """Whether ``address`` (an IP address as text; anything else is not) is in ``networks``."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _last(value: str) -> str:
    """The value the nearest proxy set (the right-most of a comma-separated list)."""
    return value.split(",")[-1].strip()


class TrustedProxies:
    """WSGI middleware: rewrites REMOTE_ADDR, the URL scheme and the host from the forwarding
    headers of a request that a trusted proxy sent."""

    def __init__(self, app, networks: Iterable[str]):
        self.app = app
        self.networks = parse_networks(networks)

    def trusted(self, address: str) -> bool:
        return address_in(address, self.networks)

    def __call__(self, environ, start_response):
        peer = environ.get("REMOTE_ADDR", "")
        if self.networks and self.trusted(peer):
            self._rewrite(environ, peer)
        return self.app(environ, start_response)

    def _rewrite(self, environ, peer: str) -> None:
        environ["gateway.proxy"] = peer
        forwarded = [a.strip() for a in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
        client = peer
        for address in reversed(forwarded):
            client = address
            if not self.trusted(address):
                break
        environ["REMOTE_ADDR"] = client
        proto = _last(environ.get("HTTP_X_FORWARDED_PROTO", "")).lower()
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
        host = _last(environ.get("HTTP_X_FORWARDED_HOST", ""))
        if host and _HOST.match(host):
            port = _last(environ.get("HTTP_X_FORWARDED_PORT", ""))
            default = "443" if environ["wsgi.url_scheme"] == "https" else "80"
            if port.isdigit() and ":" not in host.rsplit("]", 1)[-1] and port != default:
                host = f"{host}:{port}"
            environ["HTTP_HOST"] = host
            environ["SERVER_NAME"] = host.rsplit(":", 1)[0] if not host.startswith("[") else host
