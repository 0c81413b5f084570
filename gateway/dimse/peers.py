"""Access control per peer: who may associate, from where, for which clinic, to do what.

Peers come from the ``dimse.peers`` setting (a list of tables, validated by
:mod:`gateway.config`); remote AEs we connect to (C-MOVE destinations and
forwarding targets) from ``dimse.destinations``::

    [[dimse.peers]]
    ae_title = "CBCT_ROOM1"          # "*" matches any calling AE title
    hosts = ["192.168.10.21"]        # optional: addresses (or names) it must call from
    clinic = "default"               # the clinic its operations act for
    allow = ["echo", "store"]        # default: all of echo, store, find, move, get

    [[dimse.destinations]]
    ae_title = "HOSPITAL_PACS"
    host = "10.1.2.3"
    port = 104

A peer's clinic becomes the ``clinic_id`` of the principal its operations run as.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from auth.base import Principal

logger = logging.getLogger(__name__)

SERVICES = ("echo", "store", "find", "move", "get")


@dataclass(frozen=True)
class Peer:
    ae_title: str
    hosts: tuple[str, ...] = ()
    clinic: str = "default"
    allow: frozenset[str] = frozenset(SERVICES)

    def allows(self, service: str) -> bool:
        return service in self.allow

    def principal(self, calling_ae: str) -> Principal:
        """The principal a peer's operations act as (``dimse:<AE>``, the peer's clinic, role
        ``dimse``): it reads and writes its clinic and reads what is shared with that clinic."""
        return Principal(f"dimse:{calling_ae}", self.clinic, frozenset({"dimse"}), kind="dimse")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int


@lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    """The IP addresses of ``host`` (itself when it is an address)."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        return frozenset(info[4][0] for info in socket.getaddrinfo(host, None))
    except OSError as exc:
        logger.warning("peer host %r cannot be resolved: %s", host, exc)
        return frozenset()


def _normal(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:10.0.0.1 is 10.0.0.1
        return str(ip.ipv4_mapped)
    return str(ip)


class PeerTable:
    """Who may associate (``dimse.peers``) and where C-MOVE/forwarding may connect
    (``dimse.destinations``)."""

    def __init__(self, peers: Iterable[Peer] = (), destinations: Iterable[Destination] = ()):
        self.peers = tuple(peers)
        self.destinations = {d.ae_title: d for d in destinations}

    @classmethod
    def from_settings(cls, settings) -> "PeerTable":
        return cls([cls._peer(entry) for entry in settings["dimse.peers"]],
                   [Destination(d["ae_title"], d["host"], int(d["port"])) for d in settings["dimse.destinations"]])

    @staticmethod
    def _peer(entry: dict[str, Any]) -> Peer:
        return Peer(entry["ae_title"], tuple(entry.get("hosts", ())), entry.get("clinic", "default"),
                    frozenset(entry.get("allow", SERVICES)))

    def match(self, calling_ae: str, address: str) -> Peer | None:
        """The first declared peer with this AE title (or "*") whose hosts include ``address``."""
        calling_ae = calling_ae.strip()
        address = _normal(address)
        for peer in self.peers:
            if peer.ae_title not in (calling_ae, "*"):
                continue
            if not peer.hosts or any(address in _addresses(h) for h in peer.hosts):
                return peer
        return None

    def why_rejected(self, calling_ae: str, address: str) -> str:
        """A message for the log when :meth:`match` found nothing."""
        named = [p for p in self.peers if p.ae_title == calling_ae.strip()]
        if named:
            hosts = sorted({h for p in named for h in p.hosts})
            return (f"calling AE {calling_ae!r} is declared in dimse.peers but not for address {address} "
                    f"(hosts: {', '.join(hosts)})")
        if not self.peers:
            return (f"calling AE {calling_ae!r} from {address} rejected: no peer is declared "
                    "(add a [[dimse.peers]] table to the settings)")
        return f"calling AE {calling_ae!r} from {address} is not declared in dimse.peers"

    def destination(self, ae_title: str) -> Destination | None:
        return self.destinations.get(ae_title.strip())
