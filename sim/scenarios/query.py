"""Scenario "query": clinicians at random live sites ask the federation; score the answers.

Half of the queries name one patient (by pseudonym, as a home site sends it), half ask
for a modality + body part. Each is planned through the DHT index and fanned out by the
real FederatedQueryService. Recall counts (site, patient) pairs found against the ground
truth restricted to sites that are up; down sites must be reported, not silently lost.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from node.query.model import FederatedQuery
from node.query.service import FederatedAnswer, FederatedQueryService
from sim.data import GroundTruth
from sim.report import DhtFigures, Recall, SimReport, latency_summary, mean
from sim.scenarios.common import CLINICIAN, SimOptions, World, build_world


@dataclass(frozen=True)
class Ask:
    query: FederatedQuery
    modality: str | None = None
    body_part: str | None = None
    psn: str | None = None

    def expected(self, truth: GroundTruth, live: set[int]) -> set[tuple[int, str]]:
        return truth.expected(modality=self.modality, body_part=self.body_part, psn=self.psn,
                              sites=live)


def make_asks(truth: GroundTruth, count: int, rng: random.Random) -> list[Ask]:
    """Alternate single-patient and modality + body part queries (seeded)."""
    patients = sorted({f.pseudonym for f in truth.facts})
    combos = truth.combos()
    asks = []
    for n in range(count):
        if n % 2 == 0:
            psn = rng.choice(patients)
            asks.append(Ask(FederatedQuery(patient_pseudonym=psn), psn=psn))
        else:
            modality, part = rng.choice(combos)
            asks.append(Ask(FederatedQuery(modality=modality, body_part=part),
                            modality=modality, body_part=part))
    return asks


def found_pairs(answer: FederatedAnswer, index: dict[str, int]) -> set[tuple[int, str]]:
    return {(index[site], p.pseudonym) for p in answer.patients for site in p.sites
            if site in index}


@dataclass
class QueryTally:
    """What the query scenario measures, query by query."""

    recall: Recall
    dht: DhtFigures
    latencies: list[float]
    sites_asked: list[int]
    statuses: Counter[str]
    down_statuses: Counter[str]
    problems: Counter[str]          # reasons given by sites that did not answer ok
    refused: int = 0

    @classmethod
    def empty(cls) -> "QueryTally":
        return cls(Recall(), DhtFigures(), [], [], Counter(), Counter(), Counter())

    def add(self, ask: Ask, answer: FederatedAnswer, world: World, live: set[int]) -> None:
        index = world.name_to_index()
        self.recall.add(ask.expected(world.truth, live), found_pairs(answer, index))
        self.latencies.append(answer.elapsed_ms)
        self.sites_asked.append(len(answer.plan.sites))
        for s in answer.sites:
            self.statuses[s.status] += 1
            if index.get(s.site, -1) not in live:
                self.down_statuses[s.status] += 1
            self.refused += s.status == "denied"
            if s.status != "ok" and index.get(s.site, -1) in live:
                self.problems[f"{s.status}: {s.reason[:100]}"] += 1
        detail = answer.plan.detail
        if "lookups" in detail and "hops_mean" in detail:
            lookups = max(1, int(detail["lookups"]))
            self.dht.add(answer.plan.mode == "dht", float(detail["hops_mean"]),
                         int(detail.get("rpcs", 0)) / lookups)


async def run_query(directory: Path, opts: SimOptions) -> SimReport:
    world = await build_world(directory, opts)
    grid = world.grid
    try:
        rng = random.Random(opts.seed)
        down = await grid.kill_fraction(opts.down)
        live = set(grid.up)
        tally = QueryTally.empty()
        for ask in make_asks(world.truth, opts.queries, rng):
            home = grid.nodes[rng.choice(sorted(live))]
            svc = home.service(FederatedQueryService.name)
            assert isinstance(svc, FederatedQueryService)
            tally.add(ask, await svc.query(ask.query, broadcast=opts.broadcast, **CLINICIAN),
                      world, live)
    finally:
        await grid.stop()
    return SimReport(
        "query", opts.nodes, len(down), opts.seed, opts.queries, tally.recall.value,
        latency_summary(tally.latencies), tally.refused,
        extra={"planner": "broadcast" if opts.broadcast else "dht", "dht": tally.dht.as_dict(),
               "sites_asked_mean": round(mean(tally.sites_asked), 2),
               "site_statuses": dict(tally.statuses),
               "down_site_statuses": dict(tally.down_statuses),
               "live_site_problems": dict(tally.problems.most_common(5)),
               "link": {"latency_ms": opts.latency_ms, "jitter_ms": opts.jitter_ms,
                        "loss": opts.loss},
               "instances": world.instances})
