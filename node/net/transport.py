"""The seam below a node's networking: where DHT datagrams and peer-API bytes go.

A node never opens sockets itself; it asks its ``Transport``. ``SocketTransport`` (the
default) is what a hospital runs: UDP for the DHT, TLS 1.3 over TCP for the peer API,
the wall clock. The simulator passes its own transport (``sim.network``) so the same
node code — DHT protocol, peer API handlers, policy, audit, bundles, shares, replicas —
runs over in-memory delivery with a modelled network and a virtual clock.

Narrow on purpose: open a datagram endpoint, serve the peer API's aiohttp server, give
the peer client a connector, and tell the time that signatures and records carry.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
from aiohttp import web

from node.net.firstflight.client import ClientKeys, FirstFlightConnector
from node.net.firstflight.server import ServerKeys
from node.net.idle import keepalive_socket
from node.net.tls_site import AuditedTLSSite, OnRefused

DatagramFactory = Callable[[], asyncio.DatagramProtocol]


class Transport(Protocol):
    def wall_clock(self) -> float:
        """Seconds since the epoch, as carried in signed requests, datagrams and records."""
        ...

    async def open_datagram(self, factory: DatagramFactory, host: str,
                            port: int) -> asyncio.DatagramProtocol:
        """Bind a datagram endpoint; the protocol gets ``connection_made`` before return."""
        ...

    async def serve_peer(self, runner: web.AppRunner, host: str, port: int, *,
                         tls: ssl.SSLContext, on_refused: OnRefused, handshake_timeout: float,
                         sock: socket.socket | None,
                         first_flight: ServerKeys | None = None) -> tuple[web.BaseSite, int]:
        """Serve ``runner``'s app to members (also over first-flight connections, given
        ``first_flight`` keys); returns the site (to stop) and bound port."""
        ...

    def peer_connector(self, tls: ssl.SSLContext, limit_per_host: int, idle_timeout_s: float,
                       first_flight: ClientKeys | None = None) -> aiohttp.BaseConnector:
        """The connector the peer client's session opens connections through; a pooled
        connection closes after ``idle_timeout_s`` unused. With ``first_flight`` keys, new
        connections to members carry their first request in the handshake."""
        ...


class SocketTransport:
    """Real sockets, real TLS, the real clock (what ``medfed run`` uses)."""

    def wall_clock(self) -> float:
        return time.time()

    async def open_datagram(self, factory: DatagramFactory, host: str,
                            port: int) -> asyncio.DatagramProtocol:
        _transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            factory, local_addr=(host, port))
        return protocol

    async def serve_peer(self, runner: web.AppRunner, host: str, port: int, *,
                         tls: ssl.SSLContext, on_refused: OnRefused, handshake_timeout: float,
                         sock: socket.socket | None,
                         first_flight: ServerKeys | None = None) -> tuple[web.BaseSite, int]:
        site = AuditedTLSSite(runner, host, port, ssl_context=tls, on_refused=on_refused,
                              handshake_timeout=handshake_timeout, sock=sock,
                              first_flight=first_flight)
        await site.start()
        return site, site.port

    def peer_connector(self, tls: ssl.SSLContext, limit_per_host: int, idle_timeout_s: float,
                       first_flight: ClientKeys | None = None) -> aiohttp.BaseConnector:
        options = dict(ssl=tls, limit_per_host=limit_per_host, keepalive_timeout=idle_timeout_s,
                       socket_factory=keepalive_socket)   # TCP keep-alive: node.net.idle
        if first_flight is not None:
            return FirstFlightConnector(first_flight, **options)
        return aiohttp.TCPConnector(**options)


SOCKETS = SocketTransport()
