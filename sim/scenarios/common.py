"""What every scenario shares: options, the simulated clinician, building a populated grid.

A "world" is a started grid whose sites hold the planted data and have published their
DHT index, plus the ground truth of what is where; scenarios then act on it and score
what comes back against that truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.service import NodeService
from node.index.publisher import IndexPublisher
from node.node import Node
from node.query.dht_planner import DhtPlanner
from node.query.service import FederatedQueryService
from node.users import User
from sim.data import GroundTruth, Placement, ground_truth, plan_layout, plant
from sim.context import SimContext
from sim.grid import ServiceFactory, SimGrid

from sim.options import SimOptions  # noqa: F401  (the similarity scenario's import)
# The simulated clinician: a user record (as a node's UserStore would hold it) + purpose.
CLINICIAN: dict[str, Any] = {
    "user": User("sim-clinician", "u-sim-clinician", "clinician", "radiology", 0, False,
                 ("treatment",)),
    "purpose": "treatment"}


class DhtPlannerBinder:
    """Gives the node's federated-query service a DHT planner (it needs the started node).
    List it after the query service: services start in list order."""

    name = "sim-dht-planner"

    async def start(self, node: Node) -> None:
        svc = node.service(FederatedQueryService.name)
        if isinstance(svc, FederatedQueryService):
            svc.planner = DhtPlanner(node)

    async def stop(self) -> None:
        return None


def query_services(i: int, name: str) -> Sequence[NodeService]:
    """Index publishing (synced explicitly by the simulator) and DHT-planned queries.
    The grid joins every node to the DHT (in waves, and again on revive), so the
    publisher does not also join it through the roster at start: 300 nodes all doing
    that at the same virtual moment cost 129 s of a 178 s build (23 s without)."""
    return [IndexPublisher(poll_s=3600.0, join_dht=False), FederatedQueryService(),
            DhtPlannerBinder()]


@dataclass
class World:
    grid: SimGrid
    layout: list[Placement]
    truth: GroundTruth
    instances: int

    def name_to_index(self) -> dict[str, int]:
        return {n.cfg.name: i for i, n in enumerate(self.grid.nodes)}


async def gather_bounded(coros: Sequence[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def publish_index(grid: SimGrid) -> int:
    """Sync every live node's index publisher now; returns terms published."""
    pubs = [grid.nodes[i].service(IndexPublisher.name) for i in grid.up]
    reports = await gather_bounded([p.sync_now() for p in pubs
                                    if isinstance(p, IndexPublisher)])
    return sum(r.published for r in reports)


async def build_world(ctx: SimContext, services: ServiceFactory = query_services,
                      *, slices: int = 1, index: bool = True) -> World:
    opts = ctx.opts
    grid = await ctx.grid(services)
    try:
        ctx.progress.phase("planting data and publishing the index", 1)
        layout = plan_layout(opts.nodes, opts.seed)
        secrets = grid.nodes[0].membership.secrets  # type: ignore[union-attr]
        truth = ground_truth(layout, opts.seed, secrets.linkage_key)
        instances = await plant(dict(enumerate(grid.nodes)), layout, opts.seed, slices=slices)
        if index:
            await publish_index(grid)
    except BaseException:
        await grid.stop()
        raise
    return World(grid, layout, truth, instances)
