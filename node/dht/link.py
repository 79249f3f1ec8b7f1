"""Transport seam: a link model decides each outgoing datagram's fate.

The simulator runs hundreds of nodes on real loopback sockets; to study latency, jitter
and loss it injects a ``LinkModel`` into each server. The protocol asks it before every
send and then delays (``loop.call_later``) or drops the datagram, so faults are applied
where a real network would apply them — on the wire, not by mocking the node.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from node.dht.ids import Address


class LinkModel(Protocol):
    def plan(self, src: Address, dst: Address, size: int) -> float | None:
        """Seconds to delay this datagram, or None to drop it."""
        ...


@dataclass
class UniformLink:
    """Same latency, jitter and loss on every link (independent per datagram)."""

    latency: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or not 0.0 <= self.loss <= 1.0:
            raise ValueError("link latency/jitter must be >= 0 and loss within [0, 1]")

    def plan(self, src: Address, dst: Address, size: int) -> float | None:
        if self.loss and self.rng.random() < self.loss:
            return None
        return self.latency + (self.rng.uniform(0.0, self.jitter) if self.jitter else 0.0)
