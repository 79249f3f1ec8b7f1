"""Scenario "lookup": DHT hops, RPCs, latency and success as the federation grows.

Nodes join the DHT in growing waves (each through 4 random members that joined
before; ``SimGrid.join_range``); at 1/8, 1/4, 1/2 and all of N, every node
(re)publishes its one signed record — as its periodic republish would, so records sit on the k nodes closest to them at that size —
then ``queries`` lookups run from random members for random published keys
(success: the publisher's record came back). That gives hops vs log2 N in one run.
With ``--down F`` a fraction of nodes is then taken down and the lookups are repeated:
records stay findable on the surviving holders, and dead contacts must not stall a
lookup (adaptive patience, remembered dead contacts).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from typing import Any

from node.dht.records import PayloadKind
from sim.context import SimContext
from sim.grid import SimGrid
from sim.report import DhtFigures, latency_summary

SUMMARY = ("DHT lookups as the federation grows to N nodes: hops vs log2 N, RPCs per "
           "lookup, latency, success; then again with a fraction of nodes down.")


def stages(n: int) -> list[int]:
    return sorted({s for s in (n // 8, n // 4, n // 2, n) if s >= 8} | {n})


def record_key(seed: int, i: int) -> bytes:
    return hashlib.sha256(f"sim-lookup:{seed}:{i}".encode()).digest()


# Nodes republish at the same moment in batches of this many (as their periodic
# republish would, unsynchronised): one after another, N publishes took O(N) virtual
# time, during which every node's periodic work runs.
PUBLISH_BATCH = 64


async def publish(grid: SimGrid, seed: int, i: int) -> None:
    dht = grid.nodes[i].dht
    assert dht is not None
    await dht.publish(record_key(seed, i), 1, PayloadKind.NONE)


async def measure(ctx: SimContext, grid: SimGrid, published: list[int], live: list[int],
                  rng: random.Random, label: str) -> tuple[DhtFigures, list[float]]:
    dht, latencies = DhtFigures(), []
    ctx.progress.phase(f"{label}: lookups", ctx.opts.queries)
    for _ in range(ctx.opts.queries):
        owner = rng.choice(published)
        home = grid.nodes[rng.choice(live)]
        assert home.dht is not None
        started = ctx.now()
        result = await home.dht.get(record_key(ctx.opts.seed, owner))
        latencies.append((ctx.now() - started) * 1000)
        want = grid.nodes[owner].identity.node_id
        dht.add(any(r.publisher == want for r in result.records), result.lookup.hops,
                result.lookup.rpcs)
        ctx.progress.advance()
    return dht, latencies


def stage_row(size: int, figures: DhtFigures, latencies: list[float]) -> dict[str, Any]:
    """One stage's figures (also what ``sim.workers`` merges from its workers)."""
    return {"nodes": size, "log2_nodes": round(math.log2(size), 3), **figures.as_dict(),
            "latency_ms": latency_summary(latencies)}


def stage_points(row: dict[str, Any]) -> list[tuple[str, float, float]]:
    """The plotted curves' points for one stage: (series name, x, y)."""
    x = row["log2_nodes"]
    return [("hops_vs_log2n", x, row["mean_hops"]),
            ("hops_vs_log2n_target", x, math.log2(row["nodes"]) / 2 + 1),
            ("rpcs_vs_log2n", x, row["rpcs_per_lookup"])]


def summary(queries: int, nodes: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    final = rows[-1]
    return {"lookups": queries,
            "dht": {k: final[k] for k in ("lookup_success", "mean_hops", "p99_hops",
                                          "rpcs_per_lookup")},
            "latency_ms": final["latency_ms"], "stages": rows,
            "target_mean_hops": round(math.log2(nodes) / 2 + 1, 3)}


def down_figures(count: int, figures: DhtFigures, latencies: list[float]) -> dict[str, Any]:
    return {"nodes_down": count, "dht_with_down": figures.as_dict(),
            "latency_with_down_ms": latency_summary(latencies)}


async def run(ctx: SimContext) -> dict[str, Any]:
    o = ctx.opts
    rng = random.Random(o.seed)
    grid = await ctx.grid(bootstrap="none")
    rows: list[dict[str, Any]] = []
    try:
        joined = 1
        for size in stages(o.nodes):
            await grid.join_range(joined, size, progress=ctx.progress)
            ctx.progress.phase(f"{size} nodes: publishing", size)
            for start in range(0, size, PUBLISH_BATCH):
                batch = range(start, min(size, start + PUBLISH_BATCH))
                await asyncio.gather(*(publish(grid, o.seed, i) for i in batch))
                ctx.progress.advance(len(batch))
            joined = size
            figures, latencies = await measure(ctx, grid, list(range(size)), list(range(size)),
                                               rng, f"{size} nodes")
            row = stage_row(size, figures, latencies)
            rows.append(row)
            for name, x, y in stage_points(row):
                ctx.point(name, x, y)
            if size == o.nodes:
                ctx.samples["lookup_ms"] = latencies
        out = summary(o.queries, o.nodes, rows)
        if o.down:
            down = await grid.kill_fraction(o.down)
            figures, latencies = await measure(ctx, grid, list(range(o.nodes)), grid.up, rng,
                                               f"{len(down)} down")
            ctx.samples["lookup_with_down_ms"] = latencies
            out.update(down_figures(len(down), figures, latencies))
        return out
    finally:
        await grid.stop()
