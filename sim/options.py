"""What one simulator run is asked to do: every option, validated, and echoed in the report.

Defaults are the issue's reference network: one region, 20 ± 10 ms one way, no loss.
``params()`` is the exact record a replay needs to rerun the same scenario.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sim.netmodel import NetModel, NetModelError

MAX_NODES = 5000


class SimOptionsError(ValueError):
    """A simulator option is out of range; the message names it."""


@dataclass(frozen=True)
class SimOptions:
    scenario: str = "query"
    nodes: int = 20
    seed: int = 1
    latency_ms: float = 20.0      # one way (inside a region when regions > 1)
    jitter_ms: float = 10.0
    loss: float = 0.0
    regions: int = 1
    between_low_ms: float = 40.0  # latency between two regions: drawn per pair in this range
    between_high_ms: float = 120.0
    bandwidth_mbps: float = 0.0   # 0 = unlimited
    handshake_rtts: int = 2       # round trips before a new peer connection carries data
    warm_peers: int = 32          # members each node keeps warm connections to (0: none)
    down: float = 0.0             # fraction of nodes down (killed) before the measured phase
    queries: int = 30             # lookups / queries / retrievals measured
    churn_per_hour: float = 0.0   # churn: fraction of nodes that leave per hour
    session_mean_s: float = 1800.0  # churn: mean time a departed node stays away
    duration_s: float = 3600.0    # churn / durability: simulated time span
    repair: bool = True           # durability: run the owners' repair
    broadcast: bool = False       # query: ask every member instead of DHT planning
    bootstrap: str = "join"       # "join": grow through a few seeds; "roster": through the roster (a sample)
    realtime: bool = False        # real sockets, TLS and wall clock instead of virtual time
    workers: int = 1              # processes sharing the nodes (sim.workers); lookup only

    def __post_init__(self) -> None:
        from sim.scenarios import names
        if self.scenario not in names():
            raise SimOptionsError(f"scenario must be one of {', '.join(names())}")
        if not 2 <= self.nodes <= MAX_NODES:
            raise SimOptionsError(f"nodes must be from 2 to {MAX_NODES}")
        if not 0.0 <= self.down < 1.0:
            raise SimOptionsError("down must be a fraction within [0, 1)")
        if self.warm_peers < 0:
            raise SimOptionsError("warm_peers must be >= 0 (0: no warm connections)")
        if self.queries < 1 or self.seed < 0:
            raise SimOptionsError("queries must be >= 1 and seed >= 0")
        if self.churn_per_hour < 0 or self.session_mean_s <= 0 or self.duration_s <= 0:
            raise SimOptionsError("churn rate must be >= 0, session and duration > 0 seconds")
        if self.bootstrap not in ("join", "roster"):
            raise SimOptionsError('bootstrap must be "join" or "roster"')
        try:
            self.net_model()
        except NetModelError as exc:
            raise SimOptionsError(str(exc)) from exc
        if self.workers != 1:
            self._check_workers()

    def _check_workers(self) -> None:
        from sim.workers.lookahead import LookaheadError, window_s
        if not 1 <= self.workers <= self.nodes:
            raise SimOptionsError("workers must be from 1 to the number of nodes")
        if self.realtime or self.scenario != "lookup":
            raise SimOptionsError("--workers > 1 runs the lookup scenario in virtual time "
                                  "only so far (other scenarios: --workers 1)")
        try:
            window_s(self.net_model())
        except LookaheadError as exc:
            raise SimOptionsError(str(exc)) from exc

    def net_model(self) -> NetModel:
        return NetModel(latency_ms=self.latency_ms, jitter_ms=self.jitter_ms, loss=self.loss,
                        regions=self.regions,
                        between_ms=(self.between_low_ms, self.between_high_ms),
                        bandwidth_mbps=self.bandwidth_mbps, handshake_rtts=self.handshake_rtts,
                        seed=self.seed)

    @property
    def link(self) -> "LinkSpec":
        """The real-time grid's link (for scenarios written against it)."""
        from sim.link import LinkSpec
        return LinkSpec(self.latency_ms, self.jitter_ms, self.loss)

    def params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "SimOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise SimOptionsError(f"unknown simulator parameters: {', '.join(unknown)}")
        return cls(**params)
