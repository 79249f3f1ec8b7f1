"""How long an idle peer connection lives, and how a dead one is noticed.

Two clocks with two jobs:

- ``PEER_IDLE_TIMEOUT_S`` (``[federation] peer_idle_timeout_s``, 30 min): resource
  management. A pooled connection nobody used this long is closed by the client; the
  server waits ``SERVER_GRACE_S`` longer, so the client, which knows, closes first. The
  keeper's kept connections carry a signed ping just before (``node.net.keeper``).
- TCP keep-alive on every peer socket, both ends (``tcp_keepalive``): after
  ``KEEPIDLE_S`` without traffic the kernel probes every ``KEEPINTVL_S``, and gives up
  after ``KEEPCNT`` unanswered probes. It keeps the NAT and firewall state of an idle
  connection fresh (Azure's load balancer forgets an idle flow after 4 min, AWS NLB after
  350 s, GCP Cloud NAT after 20 min, most enterprise firewalls after 1 h) and notices a
  peer host that vanished without closing within ~4 min — then the connection's close
  event reaches the keeper, which dials again. No cost to the node's process.

Why 30 min, not 10 as before: the application ping was the only thing that kept a kept
connection alive, so it had to beat the 10-min pool timeout: 32 kept connections per
node each carried a signed ping every 9.5 min. In a 300-node, 1-hour churn simulation
those pings were 56,027 of 68,162 requests and 19 % of the run (143 s -> 116 s with
30 min, same recall and DHT figures; bench/RESULTS.md, "Churn"). With the kernel
keeping middleboxes awake, the pool timeout only bounds how long an unused connection
holds memory, and 30 min is still well inside it.
"""

from __future__ import annotations

import socket
from typing import Any

PEER_IDLE_TIMEOUT_S = 1800.0
SERVER_GRACE_S = 60.0       # the server's keep-alive timeout = the client's + this

KEEPIDLE_S = 120            # idle seconds before the first probe
KEEPINTVL_S = 30            # between probes
KEEPCNT = 4                 # unanswered probes before the kernel drops the connection

_TCP_OPTIONS = (("TCP_KEEPIDLE", KEEPIDLE_S), ("TCP_KEEPINTVL", KEEPINTVL_S),
                ("TCP_KEEPCNT", KEEPCNT))


def server_keepalive_timeout(client_idle_timeout_s: float) -> float:
    return client_idle_timeout_s + SERVER_GRACE_S


def tcp_keepalive(sock: Any) -> None:
    """Turn on TCP keep-alive with this module's timing (a ``socket.socket`` or asyncio's
    ``TransportSocket``). Options the platform lacks are left at its defaults."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _TCP_OPTIONS:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def keepalive_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp's ``socket_factory``: the client's peer sockets, with keep-alive on."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=type_, proto=proto)
    try:
        tcp_keepalive(sock)
    except OSError:
        sock.close()
        raise
    return sock
