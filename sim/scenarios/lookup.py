"""Scenario "lookup": how well the DHT index finds the sites holding a patient.

Each round picks a patient and a live home site, then (1) reads the patient's index key
straight from the DHT — hops, RPCs, latency, and whether every site that published it was
found — and (2) plans a single-patient query the way a home node does, counting the sites
it would ask against the sites that hold the patient (the target is ≤ holders + 2).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from node.dht.index_keys import IndexKeys
from node.query.dht_planner import plan_for
from node.query.model import FederatedQuery
from sim.report import DhtFigures, Recall, SimReport, latency_summary, mean
from sim.scenarios.common import SimOptions, build_world


async def run_lookup(directory: Path, opts: SimOptions) -> SimReport:
    world = await build_world(directory, opts)
    grid, truth = world.grid, world.truth
    try:
        down = await grid.kill_fraction(opts.down)
        live = set(grid.up)
        secrets = grid.nodes[0].membership.secrets  # type: ignore[union-attr]
        keys = IndexKeys(secrets.index_key)
        ids = {grid.nodes[i].node_id: i for i in range(opts.nodes)}
        rng = random.Random(opts.seed)
        patients = sorted({f.pseudonym for f in truth.facts})
        dht, recall = DhtFigures(), Recall()
        latencies: list[float] = []
        asked: list[int] = []
        holding: list[int] = []
        excess: list[int] = []
        for _ in range(opts.queries):
            psn = rng.choice(patients)
            home = grid.nodes[rng.choice(sorted(live))]
            assert home.dht is not None
            started = time.monotonic()
            result = await home.dht.get(keys.patient_key(psn))
            latencies.append((time.monotonic() - started) * 1000)
            found = {ids[r.publisher.hex()] for r in result.records
                     if r.count > 0 and r.publisher.hex() in ids}
            sites = truth.sites_with_patient(psn)
            dht.add(sites <= found, result.lookup.hops, result.lookup.rpcs)
            recall.add({(s, psn) for s in sites & live}, {(s, psn) for s in found})
            plan = await plan_for(home, FederatedQuery(patient_pseudonym=psn))
            asked.append(len(plan.sites))
            holding.append(len(sites))
            excess.append(len(plan.sites) - len(sites))
    finally:
        await grid.stop()
    return SimReport(
        "lookup", opts.nodes, len(down), opts.seed, opts.queries, recall.value,
        latency_summary(latencies), 0,
        extra={"dht": dht.as_dict(), "sites_asked_mean": round(mean(asked), 2),
               "sites_holding_mean": round(mean(holding), 2),
               "sites_asked_excess_max": max(excess) if excess else 0,
               "log2_nodes": round(math.log2(opts.nodes), 2),
               "link": {"latency_ms": opts.latency_ms, "jitter_ms": opts.jitter_ms,
                        "loss": opts.loss}})
