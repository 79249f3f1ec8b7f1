"""Simulated network between simulated sites: one-way latency, jitter and loss.

The same model drives both transports, applied where a real network would apply it:
DHT datagrams are delayed or dropped one by one (the DHT's ``LinkModel`` seam), and
each peer-API request waits one request leg plus one answer leg before it is sent
(the ``PeerClient.link`` hook) or fails as unreachable when either leg is lost.
Loopback itself is ~0 ms, so the injected figures are the network the report measures.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from node.dht.ids import Address
from node.net.errors import PeerUnreachable
from node.net.roster import Member


class LinkSpecError(ValueError):
    """A latency / jitter / loss setting is out of range."""


@dataclass(frozen=True)
class LinkSpec:
    latency_ms: float = 0.0   # mean one-way delay
    jitter_ms: float = 0.0    # one-way delay varies uniformly within ± jitter
    loss: float = 0.0         # probability that one leg (datagram / request / answer) is lost

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise LinkSpecError("latency and jitter must be >= 0 ms")
        if self.jitter_ms > self.latency_ms:
            raise LinkSpecError("jitter must not exceed latency (a delay cannot be negative)")
        if not 0.0 <= self.loss < 1.0:
            raise LinkSpecError("loss must be within [0, 1)")

    @property
    def rtt_ms(self) -> float:
        return 2 * self.latency_ms

    @property
    def is_perfect(self) -> bool:
        return self.latency_ms == 0 and self.loss == 0


@dataclass
class SimLink:
    """One site's outgoing links (seeded, so a run is repeatable up to scheduling)."""

    spec: LinkSpec
    rng: random.Random = field(default_factory=random.Random)
    lost: int = 0          # legs dropped so far (both transports)

    def one_way_s(self) -> float:
        s = self.spec
        jitter = self.rng.uniform(-s.jitter_ms, s.jitter_ms) if s.jitter_ms else 0.0
        return (s.latency_ms + jitter) / 1000.0

    def _lose(self) -> bool:
        if self.spec.loss and self.rng.random() < self.spec.loss:
            self.lost += 1
            return True
        return False

    # DHT seam: node.dht.link.LinkModel
    def plan(self, src: Address, dst: Address, size: int) -> float | None:
        return None if self._lose() else self.one_way_s()

    # Peer seam: PeerClient.link
    async def before_call(self, member: Member) -> None:
        delay = self.one_way_s() + self.one_way_s()
        lost = self._lose() or self._lose()
        if delay > 0:
            await asyncio.sleep(delay)
        if lost:
            raise PeerUnreachable(member.node_id, "simulated packet loss on the link")
