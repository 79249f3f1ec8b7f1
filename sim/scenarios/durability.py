"""Scenario "durability": a fraction of nodes leaves for good — which bundles survive?

Owners publish series (de-identify → bundle → k-of-n key shares → r replicas, the
node's defaults). Then ``--down F`` of the other nodes leave permanently: their machines
go away and the operator revokes them (the new roster is handed to every member). With
``--repair`` every owner runs one repair round (replica challenges and re-placement,
re-sharing of keys whose holders left) and the bytes it moves are counted; then every
owner goes down as well, and each bundle is retrieved by a live node through replicas
and key shares, decrypted in memory. ``bundles_recoverable`` is the share that came
back complete; ``predicted_recoverable`` says what the placement alone promises
(≥ 1 replica holder and ≥ k share holders left), so the two can be compared.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from node.config.model import NodeConfig
from node.net.federation import revoke
from node.replica.service import ReplicaService
from sim.context import SimContext
from sim.data import Placement, plant
from sim.grid import SimGrid, sim_config
from sim.report import latency_summary
from sim.scenarios.sharing import Published, _publish, _retrieve_all, sharing_services

SUMMARY = ("Lose a fraction of nodes for good (revoked): which bundles stay decryptable and "
           "retrievable, with or without one repair round, and how many bytes repair moves.")
SLICES, SIZE = 2, 32


def no_background_repair(cfg: NodeConfig) -> NodeConfig:
    """Repair runs when the scenario says, so with and without repair differ only there."""
    return replace(sim_config(cfg), federation=replace(cfg.federation,
                                                       repair_interval_s=10.0 ** 9))


def predicted(pub: Published, live: set[str], k: int) -> bool:
    return (any(h in live for h in pub.entry.replica_holders)
            and sum(h in live for h in pub.entry.share_holders) >= k)


async def _leave_for_good(grid: SimGrid, victims: list[int]) -> None:
    for i in victims:
        await grid.kill(i)
        signed = revoke(grid.fed.operator_dir, grid.nodes[i].node_id)
        for j in grid.up:
            membership = grid.nodes[j].membership
            assert membership is not None
            membership.roster.offer(signed)


async def run(ctx: SimContext) -> dict[str, Any]:
    o = ctx.opts
    rng = random.Random(o.seed)
    owners = sorted(rng.sample(range(o.nodes), max(2, o.nodes // 5)))
    layout = [Placement(site, 2000 + 10 * site + j, rng.choice(("CT", "MR")))
              for site in owners for j in range(2)]
    grid = await ctx.grid(sharing_services, configure=no_background_repair)
    try:
        fed = grid.nodes[0].cfg.federation
        ctx.progress.phase("publishing bundles", 1)
        await plant(dict(enumerate(grid.nodes)), layout, o.seed, slices=SLICES, size=SIZE)
        published = await _publish(grid, owners)
        others = [i for i in range(o.nodes) if i not in owners]
        victims = sorted(random.Random(o.seed + 7).sample(
            others, min(len(others) - 1, round(o.down * o.nodes))))
        await _leave_for_good(grid, victims)
        live = {grid.nodes[i].node_id for i in grid.up if i not in owners}
        promised = sum(predicted(p, live, fed.shares_k) for p in published)
        assert ctx.network is not None
        before = sum(ctx.network.stream_bytes.values())
        repaired = placed = 0
        if o.repair:
            ctx.progress.phase("owners repair", len(owners))
            for i in owners:
                replica = grid.nodes[i].service(ReplicaService.name)
                assert isinstance(replica, ReplicaService)
                report = await replica.repair_once()
                placed += len(report.placed)
                repaired += len(report.shares.reshared) if report.shares is not None else 0
                ctx.progress.advance()
        repair_bytes = sum(ctx.network.stream_bytes.values()) - before
        for i in owners:
            await grid.kill(i)
        ctx.progress.phase("retrieving every bundle", 1)
        tally = await _retrieve_all(grid, published, rng)
    finally:
        await grid.stop()
    ctx.samples["retrieval_ms"] = tally.latencies
    bundles = len(published)
    lost = len(victims)
    return {"bundles": bundles, "killed": lost, "killed_fraction": round(lost / o.nodes, 4),
            "owners": len(owners), "k": fed.shares_k, "n": fed.shares_n, "r": fed.replicas,
            "repair": o.repair,
            "bundles_recoverable": round(tally.ok / bundles, 4) if bundles else 0.0,
            "predicted_recoverable": round(promised / bundles, 4) if bundles else 0.0,
            "repair_bytes": repair_bytes,
            "repair_bytes_per_lost_node": round(repair_bytes / lost) if lost else 0,
            "replicas_replaced": placed, "keys_reshared": repaired,
            "retrieval_latency_ms": latency_summary(tally.latencies),
            "retrieval_failures": tally.failures[:5]}
