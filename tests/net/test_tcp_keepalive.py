"""Peer sockets at both ends have TCP keep-alive (``node.net.idle``), over real mTLS.

Read from the kernel: /proc/net/tcp shows a keep-alive timer (``tr`` = 2) on an idle
established socket only when SO_KEEPALIVE is on, and its remaining time shows
TCP_KEEPIDLE (120 s here against Linux's default 7,200 s)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from node.net.idle import KEEPIDLE_S, PEER_IDLE_TIMEOUT_S, server_keepalive_timeout
from node.net.server import PeerServerSettings

from tests.net.test_peer_api import Fed, client_of, fed  # noqa: F401  (the fixture)

USER_HZ = os.sysconf("SC_CLK_TCK")      # /proc/net/tcp counts timers in these ticks


def _tcp_sockets() -> list[dict[str, int]]:
    """Established IPv4 sockets: local / remote port, timer kind, ticks left."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, remote, state, timer = cols[1], cols[2], cols[3], cols[5]
        if state != "01":                # ESTABLISHED
            continue
        kind, left = timer.split(":")
        rows.append({"local": int(local.split(":")[1], 16), "remote": int(remote.split(":")[1], 16),
                     "timer": int(kind, 16), "ticks": int(left, 16)})
    return rows


async def test_both_ends_of_a_peer_connection_probe_when_idle(fed: Fed) -> None:  # noqa: F811
    port = int(fed.alpha.member.peer_address.rsplit(":", 1)[1])
    async with client_of(fed.beta) as client:
        await client.call(fed.alpha.member, "POST", "/v1/echo", {"q": 1}, timeout=5)
        deadline = time.monotonic() + 5
        while True:   # right after the answer a socket may still show its retransmit timer (1)
            ends = [s for s in _tcp_sockets() if port in (s["local"], s["remote"])]
            if all(s["timer"] != 1 for s in ends) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        server_side = [s for s in ends if s["local"] == port]
        client_side = [s for s in ends if s["remote"] == port]
        assert len(server_side) == 1 and len(client_side) == 1, ends
        for end in server_side + client_side:
            assert end["timer"] == 2, f"no keep-alive timer on {end}"
            left_s = end["ticks"] / USER_HZ
            assert 0 < left_s <= KEEPIDLE_S, end     # ours, not the 2-hour default


def test_server_outlives_the_clients_idle_timeout() -> None:
    assert PEER_IDLE_TIMEOUT_S == 1800.0
    assert PeerServerSettings().keepalive_timeout_s == server_keepalive_timeout(PEER_IDLE_TIMEOUT_S) > 1800.0
