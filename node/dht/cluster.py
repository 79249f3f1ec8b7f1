"""Many DHT nodes in one process on loopback — for the simulator and integration tests.

Each node is a full ``DHTServer`` with its own UDP socket on 127.0.0.1 (ephemeral
port), identity and store; they share only a membership set. Nodes join through the
first node, a few at a time, like sites joining a federation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from node.dht.config import DHTConfig
from node.dht.link import LinkModel
from node.dht.membership import StaticMembership
from node.dht.server import DHTServer
from node.identity import NodeIdentity


@dataclass
class Cluster:
    servers: list[DHTServer]
    membership: StaticMembership

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))


async def start_cluster(n: int, config: DHTConfig | None = None,
                        link_factory: Callable[[], LinkModel] | None = None,
                        join_concurrency: int = 4, host: str = "127.0.0.1") -> Cluster:
    if n < 1:
        raise ValueError("a cluster needs at least one node")
    identities = [NodeIdentity.generate() for _ in range(n)]
    membership = StaticMembership({i.verify_key for i in identities})
    servers = [DHTServer(i, membership, config,
                         link=link_factory() if link_factory else None) for i in identities]
    cluster = Cluster(servers, membership)
    try:
        for server in servers:
            await server.start(host, 0)
        seed = servers[0].address
        gate = asyncio.Semaphore(join_concurrency)

        async def join(server: DHTServer) -> None:
            async with gate:
                await server.bootstrap([seed])

        await asyncio.gather(*(join(s) for s in servers[1:]))
    except BaseException:
        await cluster.stop()
        raise
    return cluster
