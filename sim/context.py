"""What a scenario gets to work with: options, the simulated network, a folder, and
places to put what it measures (samples for CDFs, curves, progress)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from node.config.model import NodeConfig
from node.dht.config import DHTConfig
from node.service import NodeService
from sim.grid import ServiceFactory, SimGrid, sim_config
from sim.link import LinkSpec
from sim.network import SimNetwork
from sim.options import SimOptions


class Progress(Protocol):
    def phase(self, description: str, total: float) -> None: ...
    def advance(self, amount: float = 1.0) -> None: ...


class NoProgress:
    def phase(self, description: str, total: float) -> None:
        return None

    def advance(self, amount: float = 1.0) -> None:
        return None


def no_services(i: int, name: str) -> Sequence[NodeService]:
    return ()


@dataclass
class SimContext:
    opts: SimOptions
    directory: Path
    network: SimNetwork | None          # None in real time (loopback sockets)
    progress: Progress = field(default_factory=NoProgress)
    samples: dict[str, list[float]] = field(default_factory=dict)
    series: dict[str, list[list[float]]] = field(default_factory=dict)

    @classmethod
    def create(cls, opts: SimOptions, directory: Path,
               progress: Progress | None = None) -> "SimContext":
        network = None if opts.realtime else SimNetwork(opts.net_model(), opts.seed)
        return cls(opts, directory, network, progress or NoProgress())

    def now(self) -> float:
        """Seconds on the loop's clock (virtual unless --realtime)."""
        return asyncio.get_running_loop().time()

    def handshakes(self) -> int:
        """Peer (stream) connections opened so far on the simulated network (0 in real time)."""
        return sum(self.network.handshakes.values()) if self.network is not None else 0

    def sample(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def point(self, name: str, x: float, y: float) -> None:
        self.series.setdefault(name, []).append([x, y])

    async def grid(self, services: ServiceFactory = no_services, *, bootstrap: str | None = None,
                   dht_config: DHTConfig | None = None, nodes: int | None = None,
                   configure: Callable[[NodeConfig], NodeConfig] = sim_config) -> SimGrid:
        """Start the scenario's nodes (``bootstrap="none"``: the caller joins the DHT)."""
        o = self.opts
        link = LinkSpec(o.latency_ms, o.jitter_ms, o.loss)

        def configured(cfg: NodeConfig) -> NodeConfig:
            cfg = configure(cfg)
            return replace(cfg, federation=replace(cfg.federation, warm_peers=o.warm_peers))
        return await SimGrid.start(self.directory, nodes or o.nodes, seed=o.seed, link=link,
                                   services=services, dht_config=dht_config,
                                   bootstrap=bootstrap or o.bootstrap, network=self.network,
                                   progress=self.progress, configure=configured)
