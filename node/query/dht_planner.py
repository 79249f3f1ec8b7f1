"""DHT-narrowed planning: ask only the sites whose index records match every indexed term.

Indexed terms of a query: the patient pseudonym; modality + body part; modality + study
month (a date range is expanded into months, at most ``max_months``, else that term is
not used). Each term's keys are looked up in parallel; a site is a candidate only if it
published a non-zero record for every term (for a month range: for any month in it).
Safety first: a query with no indexed term, a request for broadcast, or ANY lookup that
fails, times out or reaches no holder falls back to asking every member — the DHT may
make a query cheaper, never less complete. The home node is added when its own store
holds every term, even before its records have reached the DHT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from node.dht.index_keys import IndexKeyError, IndexKeys
from node.dht.server import GetResult
from node.index.publisher import IndexPublisher, local_terms
from node.index.terms import MODALITY_BODYPART, MODALITY_MONTH, PATIENT
from node.net.roster import Member

from .model import FederatedQuery
from .planner import Plan

if TYPE_CHECKING:
    from node.node import Node

MAX_MONTHS = 24


@dataclass(frozen=True)
class IndexedTerm:
    """One condition of the query; a site satisfies it by holding ANY of ``keys``."""

    kind: str
    keys: tuple[bytes, ...]


def months_between(first: date, last: date) -> list[str]:
    """'YYYY-MM' for every month from ``first`` to ``last`` inclusive."""
    out = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def indexed_terms(query: FederatedQuery, keys: IndexKeys, *, today: date,
                  max_months: int = MAX_MONTHS) -> list[IndexedTerm]:
    """The query's conditions the DHT can answer (pure). Values that are not index
    codes (wildcards, free text) are simply not used: the plan is wider, never wrong."""
    terms: list[IndexedTerm] = []
    try:
        if query.patient_pseudonym:
            terms.append(IndexedTerm(PATIENT, (keys.patient_key(query.patient_pseudonym),)))
    except IndexKeyError:
        pass
    if not query.modality:
        return terms
    try:
        if query.body_part:
            terms.append(IndexedTerm(MODALITY_BODYPART, (
                keys.modality_bodypart_key(query.modality, query.body_part),)))
    except IndexKeyError:
        pass
    if query.study_date_from is not None:
        last = query.study_date_to or max(query.study_date_from, today)
        months = months_between(query.study_date_from, last)
        try:
            if len(months) <= max_months:
                terms.append(IndexedTerm(MODALITY_MONTH, tuple(
                    keys.modality_month_key(query.modality, m) for m in months)))
        except IndexKeyError:
            pass
    return terms


def candidates(terms: Sequence[IndexedTerm], found: Mapping[bytes, set[str]]) -> set[str]:
    """Node ids (hex) that hold every term; ``found`` maps key → holders (pure)."""
    result: set[str] | None = None
    for term in terms:
        holders = set().union(*(found.get(k, set()) for k in term.keys))
        result = holders if result is None else result & holders
    return result or set()


def _holders(result: GetResult) -> set[str]:
    return {r.publisher.hex() for r in result.records if r.count > 0}


def _broadcast(roster: list[Member], reason: str, **extra: Any) -> Plan:
    return Plan(roster, "broadcast", 0, {"reason": reason, "members": len(roster), **extra})


class DhtPlanner:
    """Implements the ``Planner`` protocol of node/query/planner.py."""

    def __init__(self, node: "Node", *, max_months: int = MAX_MONTHS,
                 lookup_deadline_s: float | None = None, parallel: int = 8,
                 today: Callable[[], date] = date.today) -> None:
        if max_months < 1 or parallel < 1:
            raise ValueError("DHT planner: max_months and parallel must be >= 1")
        self.node = node
        self.max_months = max_months
        self.parallel = parallel
        self.lookup_deadline_s = lookup_deadline_s
        self._today = today

    def _deadline(self) -> float:
        if self.lookup_deadline_s is not None:
            return self.lookup_deadline_s
        return self.node.cfg.federation.query_deadline_s / 2

    async def plan(self, query: FederatedQuery, members: Sequence[Member], *,
                   broadcast: bool) -> Plan:
        roster = sorted(members, key=lambda m: (m.name, m.node_id))
        node = self.node
        if broadcast:
            return _broadcast(roster, "broadcast requested")
        if node.dht is None or node.membership is None:
            return _broadcast(roster, "this node has no DHT")
        secrets = node.membership.secrets
        query = query.for_federation(secrets.linkage_key)
        terms = indexed_terms(query, IndexKeys(secrets.index_key), today=self._today(),
                              max_months=self.max_months)
        if not terms:
            return _broadcast(roster, "no indexed terms in the query")
        keys = sorted({k for t in terms for k in t.keys})
        started = asyncio.get_running_loop().time()
        dht = node.dht
        gate = asyncio.Semaphore(self.parallel)  # a burst of lookups loses datagrams

        async def get(key: bytes) -> GetResult:
            async with gate:
                return await dht.get(key)

        try:
            results = await asyncio.wait_for(asyncio.gather(*(get(k) for k in keys)),
                                             self._deadline())
        except Exception as exc:  # timeout, DHT stopped, ...: never lose recall
            return _broadcast(roster, f"DHT lookup failed ({type(exc).__name__})",
                              lookups=len(keys))
        stats = [r.lookup for r in results]
        detail: dict[str, Any] = {
            "terms": [t.kind for t in terms], "lookups": len(keys),
            "hops": max(s.hops for s in stats),
            "hops_mean": sum(s.hops for s in stats) / len(stats),
            "rpcs": sum(s.rpcs for s in stats), "timeouts": sum(s.timeouts for s in stats),
            "duration_s": asyncio.get_running_loop().time() - started}
        if len(roster) > 1 and any(s.responses == 0 for s in stats):
            return _broadcast(roster, "a DHT lookup reached no holder", **detail)
        if any(r.truncated for r in results):   # sites past the read would be missed
            return _broadcast(roster, "a DHT key holds more records than one read fetches",
                              **detail)
        chosen = candidates(terms, {k: _holders(r) for k, r in zip(keys, results)})
        if await self._home_holds(terms):
            chosen.add(node.node_id)
        sites = [m for m in roster if m.node_id in chosen]
        detail["candidates"] = len(sites)
        return Plan(sites, "dht", len(roster) - len(sites), detail)

    async def _home_holds(self, terms: Sequence[IndexedTerm]) -> bool:
        publisher = self.node.service(IndexPublisher.name)
        if isinstance(publisher, IndexPublisher) and publisher.running:
            local = await publisher.current_counts()
        else:
            local = (await local_terms(self.node)).counts
        return all(any(local.get(k, 0) > 0 for k in t.keys) for t in terms)


async def plan_for(node: "Node", query: FederatedQuery, *,
                   lookup_deadline_s: float | None = None) -> Plan:
    """Plan ``query`` at ``node`` over its active roster (the simulator's entry point)."""
    if node.membership is None:
        raise ValueError("plan_for needs a federation member node (no membership installed)")
    planner = DhtPlanner(node, lookup_deadline_s=lookup_deadline_s)
    return await planner.plan(query, node.membership.roster.current.active(), broadcast=False)
