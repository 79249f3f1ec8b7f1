"""Bind and advertised addresses: what a node listens on, and what other sites dial.

A node binds each port on a host (``--host``, default every interface: ``0.0.0.0``) and
tells the federation one address to reach it (``--advertise``, written to ``[node]
advertise``; it goes into the admission request and from there into the roster). Behind
NAT or a load balancer the two differ; on one test machine both are ``127.0.0.1``.
"""

from __future__ import annotations

import ipaddress
import socket

WILDCARDS = ("0.0.0.0", "::", "")


class AddressError(ValueError):
    """An advertised address other sites could not use (the message says what to set)."""


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in WILDCARDS


def guess_advertise_host() -> str:
    """This machine's address on its default route, for `medfed init` without --advertise.

    Connecting a UDP socket sends no packet; it only asks the kernel which local address
    it would use. Falls back to the host name, then loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))       # TEST-NET-1: never routed, nothing sent
            address = probe.getsockname()[0]
        except OSError:
            address = ""
    if address and not ipaddress.ip_address(address).is_loopback:
        return address
    name = socket.getfqdn()
    return name if name and name != "localhost" else "127.0.0.1"


def advertised(advertise_host: str, bind_host: str, port: int) -> str:
    """``host:port`` other members dial; raises AddressError for a wildcard."""
    host = advertise_host or bind_host
    if is_wildcard(host):
        raise AddressError(f"the node listens on every interface ({bind_host!r}) but has no "
                           "advertised address: set [node] advertise = \"HOST\" (the name or "
                           "address other hospitals reach this machine at), or pass "
                           "--advertise to 'medfed init'")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"                         # IPv6 literal
    return f"{host}:{port}"
