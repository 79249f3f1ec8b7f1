"""The link model of the simulated network (pure): latency, jitter, loss, bandwidth.

One-way delay of a message = base latency of the two hosts' regions + jitter (uniform
within ± ``jitter_ms``) + size / bandwidth. With one region every link has
``latency_ms`` (e.g. 20 ± 10 ms); with several, hosts inside a region are
``latency_ms`` apart and each pair of regions gets a fixed latency drawn once from
``between_ms`` (e.g. 5 ms inside, 40–120 ms between). Loss applies per datagram; a
stream segment that is "lost" arrives one retransmission timeout late, as TCP would.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any


class NetModelError(ValueError):
    """A network setting is out of range; the message names it."""


@dataclass(frozen=True)
class NetModel:
    latency_ms: float = 20.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    regions: int = 1
    between_ms: tuple[float, float] = (40.0, 120.0)
    bandwidth_mbps: float = 0.0          # per link and direction; 0 = unlimited
    handshake_rtts: int = 2              # TCP + TLS 1.3 before a new connection carries data
    retransmit_s: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise NetModelError("latency and jitter must be >= 0 ms")
        if self.jitter_ms > self.latency_ms:
            raise NetModelError("jitter must not exceed latency (a delay cannot be negative)")
        if not 0.0 <= self.loss < 1.0:
            raise NetModelError("loss must be within [0, 1)")
        if self.regions < 1 or not 0 <= self.between_ms[0] <= self.between_ms[1]:
            raise NetModelError("regions must be >= 1 and between_ms a (low, high) range")
        if self.bandwidth_mbps < 0 or self.handshake_rtts < 0:
            raise NetModelError("bandwidth and handshake round trips must be >= 0")

    @classmethod
    def regional(cls, regions: int = 4, inside_ms: float = 5.0,
                 between_ms: tuple[float, float] = (40.0, 120.0), **kw: Any) -> "NetModel":
        return cls(latency_ms=inside_ms, regions=regions, between_ms=between_ms, **kw)

    def region_of(self, index: int) -> int:
        return index % self.regions

    def base_ms(self, a: int, b: int) -> float:
        if a == b:
            return self.latency_ms
        lo, hi = self.between_ms
        pair = f"{self.seed}:{min(a, b)}:{max(a, b)}"
        return random.Random(pair).uniform(lo, hi)

    def delay(self, a: int, b: int, size: int, rng: random.Random, *,
              lossless: bool = False) -> float | None:
        """Seconds for one message of ``size`` bytes from region a to region b."""
        if not lossless and self.loss and rng.random() < self.loss:
            return None
        ms = self.base_ms(a, b)
        if self.jitter_ms:
            ms += rng.uniform(-self.jitter_ms, self.jitter_ms)
        seconds = ms / 1000.0
        if self.bandwidth_mbps:
            seconds += size * 8 / (self.bandwidth_mbps * 1e6)
        return seconds

    def describe(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["between_ms"] = list(self.between_ms)
        return doc
