"""The in-memory network's own order is the order things happened, never object addresses."""

from __future__ import annotations

import asyncio

from sim.netmodel import NetModel
from sim.network import SimNetwork
from sim.vclock import run_virtual


class _Recorder(asyncio.Protocol):
    def __init__(self, name: str, lost: list[str]) -> None:
        self.name, self.lost = name, lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(self.name)


def test_a_host_going_down_resets_its_connections_in_the_order_they_were_opened() -> None:
    """A kill resets every open connection of the host; the connection_lost callbacks
    (and what the nodes do next, drawing from their seeded streams) must run in the same
    order in every run. A set of transports iterated in address order did not."""

    async def scenario() -> list[str]:
        net = SimNetwork(NetModel(latency_ms=20, jitter_ms=10), seed=1)
        for name in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            net.add_host(name, 0)
        lost: list[str] = []
        net.listen(("10.0.0.2", 4433), lambda: asyncio.Protocol(), "server")
        clients = [f"c{k:02d}" for k in range(40)]
        for k, name in enumerate(clients):
            src = "10.0.0.1" if k % 2 else "10.0.0.3"
            await net.connect(src, ("10.0.0.2", 4433), None, {}, _Recorder(name, lost))
        net.set_up("10.0.0.2", False)
        await asyncio.sleep(1.0)
        assert net.connections("10.0.0.1") == net.connections("10.0.0.3") == 0
        return lost

    assert run_virtual(scenario()) == [f"c{k:02d}" for k in range(40)]
