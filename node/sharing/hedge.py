"""While a fetch dials the owner afresh, dial the replica path's members as well.

Why: a process with no connection open (``medfed fetch`` with no node running) pays TCP
+ TLS (2 round trips) to the owner before it can ask. If the owner is down it learns so
only from that dial (refused or reset, at least 1 round trip), and the replica +
key-share path then pays 2 round trips of handshakes of its own before its requests
(bench.wan, 1 Gbit/s / 20 ms: first bytes at 0.12-0.20 s against 0.08 s from the owner).
Dialled while the owner's dial is under way, those connections are ready when the owner
fails, and the fallback costs only its requests' round trip.

With first-flight connections (``node.net.firstflight``, what ``medfed fetch`` uses when no
node runs) a dial is the TCP handshake only: the request still travels in the Noise
handshake, so the fallback's first answer byte comes 1 round trip after the owner failed.
An unused one closes without a byte sent, which the peer does not count as a refusal.

Only connections, nothing above TLS: no key share is asked for (a release is audited at
its holder and must not happen when the owner answers) and no bundle byte moves. It
fires only when the owner's request finds no pooled connection (``PeerClient.stream``'s
``on_dial``): a running node's kept connection or a warm pool answers in 1 round trip,
and an owner the node already knows is down is not asked first at all, so those fetches
dial nothing more than before. What it costs when the owner answers: a few handshakes
(CPU on both sides, a few KB on the link) and pooled connections that idle out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from node.net.client import PeerClient
from node.net.roster import Member

# after the owner's dial started: its ClientHello leaves first and its server's flight is
# handled first when the answers come back (they all arrive ~1 round trip later)
HEDGE_DELAY_S = 0.005


class ReplicaPathDialer:
    """``on_dial`` (the owner's request is opening a connection) arms it; ``delay_s``
    later every member gets a ``PeerClient.preconnect``; ``stop`` (the owner attempt
    ended) disarms it if it has not fired yet."""

    def __init__(self, client: PeerClient, members: Sequence[Member], *, timeout_s: float,
                 delay_s: float = HEDGE_DELAY_S) -> None:
        self.client = client
        self.members = list(members)
        self.timeout_s = timeout_s
        self.delay_s = delay_s
        self.dialled: list[str] = []        # node ids, once fired
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def on_dial(self) -> None:
        if self._timer is None and not self.dialled and not self._stopped and self.members:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        for member in self.members:
            self.client.preconnect(member, timeout=self.timeout_s)
            self.dialled.append(member.node_id)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
