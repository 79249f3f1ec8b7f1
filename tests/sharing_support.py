"""Shared set-up of the in-memory sharing tests: one published series and a bystander."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.data import Placement, plant

if TYPE_CHECKING:
    from node.node import Node
    from node.sharing.catalog import CatalogEntry
    from sim.grid import SimGrid


async def publish_one_series(owner: "Node", *, seed: int) -> "CatalogEntry":
    """Plant one 2-slice CT series on ``owner`` and publish it (bundle, replicas, key
    shares); its catalog entry."""
    await plant({0: owner}, [Placement(site=0, patient=1, modality="CT")], seed=seed,
                slices=2, size=16)
    publisher = owner.service("publisher")
    await publisher.run_due()  # type: ignore[union-attr]
    (entry,) = await publisher.catalog.entries()  # type: ignore[union-attr]
    return entry


def bystander(grid: "SimGrid", owner: "Node", entry: "CatalogEntry") -> int:
    """Index of the first node that is neither the owner nor one of its replica holders."""
    busy = {owner.node_id, *entry.replica_holders}
    return next(i for i, n in enumerate(grid.nodes) if n.node_id not in busy)
