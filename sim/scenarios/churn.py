"""Scenario "churn": sites leave and come back while clinicians keep querying.

Departures arrive as a Poisson process at ``--churn-per-hour`` × N per hour; each takes
a random live site down (its process stops, its folder stays) for a time drawn from an
exponential distribution with mean ``--session-mean-s``, then it restarts from disk and
rejoins. Meanwhile ``--queries`` federated queries are spread evenly over
``--duration-s`` of simulated time from random live sites. Recall counts the
(site, patient) pairs of sites that were up when the query started; a query is
``complete`` when it found all of them. ``dht_planned`` is the share of queries the DHT
index planned without falling back to asking everyone (``dht_fallbacks`` counts the
reasons of the others); for each single-patient query
the home site also reads the patient's index key, and ``dht.lookup_success`` is the
share of those lookups that returned a record from every live site holding the patient.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from node.dht.index_keys import IndexKeys
from node.query.service import FederatedQueryService
from sim.context import SimContext
from sim.report import DhtFigures, Recall, latency_summary
from sim.scenarios.common import CLINICIAN, build_world
from sim.scenarios.query import found_pairs, make_asks

SUMMARY = ("Sites leave (Poisson, at a rate per hour) and return (exponential time away) "
           "while queries run over simulated hours: recall and DHT planning over time.")
MIN_UP = 0.5      # churn never takes more than half of the sites down at once


async def _churn(ctx: SimContext, grid: Any, rng: random.Random,
                 log: list[tuple[float, int, int]]) -> None:
    o = ctx.opts
    rate = o.churn_per_hour * o.nodes / 3600.0
    returns: set[asyncio.Task[None]] = set()

    async def come_back(i: int, after: float) -> None:
        await asyncio.sleep(after)
        await grid.revive(i)
        log.append((ctx.now(), len(grid.up), 0))

    try:
        while rate > 0:
            await asyncio.sleep(rng.expovariate(rate))
            up = grid.up
            if len(up) - 1 < MIN_UP * o.nodes:
                continue
            i = rng.choice(up)
            await grid.kill(i)
            log.append((ctx.now(), len(grid.up), 1))
            task = asyncio.create_task(come_back(i, rng.expovariate(1.0 / o.session_mean_s)))
            returns.add(task)
            task.add_done_callback(returns.discard)
    finally:
        for task in returns:
            task.cancel()
        await asyncio.gather(*returns, return_exceptions=True)


async def run(ctx: SimContext) -> dict[str, Any]:
    o = ctx.opts
    world = await build_world(ctx)
    grid = world.grid
    rng = random.Random(o.seed)
    departures: list[tuple[float, int, int]] = []
    keys = IndexKeys(grid.nodes[0].membership.secrets.index_key)  # type: ignore[union-attr]
    ids = {grid.nodes[i].identity.node_id: i for i in range(o.nodes)}
    lookups = DhtFigures()
    churner = asyncio.create_task(_churn(ctx, grid, random.Random(o.seed + 1), departures))
    start = ctx.now()
    recall, bins = Recall(), {}
    complete = planned = 0
    fallbacks: Counter[str] = Counter()   # why a query was broadcast instead of planned
    latencies: list[float] = []
    try:
        asks = make_asks(world.truth, o.queries, rng)
        ctx.progress.phase(f"queries over {o.duration_s / 3600:g} simulated h", len(asks))
        gap = o.duration_s / len(asks)
        index = world.name_to_index()
        for ask in asks:
            await asyncio.sleep(gap)
            live = set(grid.up)
            home = grid.nodes[rng.choice(sorted(live))]
            svc = home.service(FederatedQueryService.name)
            assert isinstance(svc, FederatedQueryService)
            answer = await svc.query(ask.query, broadcast=o.broadcast, **CLINICIAN)
            want, got = ask.expected(world.truth, live), found_pairs(answer, index)
            recall.add(want, got)
            complete += want <= got
            planned += answer.plan.mode == "dht"
            if answer.plan.mode != "dht":
                fallbacks[str(answer.plan.detail.get("reason", "unknown"))] += 1
            latencies.append(answer.elapsed_ms)
            if ask.psn is not None and home.dht is not None:
                result = await home.dht.get(keys.patient_key(ask.psn))
                holders = world.truth.sites_with_patient(ask.psn) & live
                found = {ids[r.publisher] for r in result.records if r.publisher in ids}
                lookups.add(holders <= found, result.lookup.hops, result.lookup.rpcs)
            hour = round((ctx.now() - start) / 3600, 3)
            slot = bins.setdefault(int((ctx.now() - start) // max(o.duration_s / 12, 1)),
                                   [hour, Recall()])
            slot[1].add(want, got)
            ctx.point("nodes_up_over_time", hour, len(live))
            ctx.progress.advance()
    finally:
        churner.cancel()
        await asyncio.gather(churner, return_exceptions=True)
        await grid.stop()
    for _slot, (hour, r) in sorted(bins.items()):
        ctx.point("recall_over_time", hour, round(r.value, 4))
    ctx.samples["query_ms"] = latencies
    return {"queries": o.queries, "duration_h": round(o.duration_s / 3600, 3),
            "churn_per_hour": o.churn_per_hour, "session_mean_s": o.session_mean_s,
            "departures": sum(e[2] for e in departures),
            "returns": sum(1 - e[2] for e in departures), "dht": lookups.as_dict(),
            "recall": round(recall.value, 4),
            "queries_complete": round(complete / len(latencies), 4) if latencies else 0.0,
            "dht_planned": round(planned / len(latencies), 4) if latencies else 0.0,
            "dht_fallbacks": dict(sorted(fallbacks.items())),
            "latency_ms": latency_summary(latencies), "instances": world.instances}
