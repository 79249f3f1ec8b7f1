"""Iterative α-parallel Kademlia lookup that finishes on the k closest live contacts.

Upstream's crawler runs in lock-step rounds that wait for the slowest of α replies, so
one dead peer stalls a round for a whole timeout. Here α queries are kept in flight
(α = k by default: one wave) and the lookup ends as soon as the k closest contacts that
have not failed have all answered. Each query has a *soft* deadline (``patience``:
adapted from measured round trips, see ``liveness``, and never shorter than the slowest
answer this lookup already got): past it the next closest contact is asked as a spare
(at most α/2 such extra queries are in flight, so a loaded host is not flooded), and
once it is late by both ``GRACE`` × patience and ``GRACE`` × the slowest answer this
lookup got, it is given up on: it leaves the k closest and the spare takes its place
(so a loaded host, where every answer is late, does not give up on live contacts). At
most k/2 contacts are given up on in one lookup: past that, lateness is not taken for
death and the others get their full deadline, so a read on a host stalled for longer
than its patience still reaches most of the k closest holders. A
late answer is still used while the lookup runs. The RPC itself runs on to its hard deadline; when the lookup is done,
such stragglers are handed to ``leftover`` (the DHT node lets them finish, so a dead
contact is still detected and remembered) or cancelled. Contacts ``skip`` says are
suspect are asked only when too few others are left.

Value lookups do not stop at the first holder — a key has many publishers and holders
may differ, so replies are collected until the k nearest are settled. A holder of many
records answers in several pages, one round trip each (``RpcClient.find_value``), so
its whole reply takes longer than a one-datagram referral: a contact that has been
heard from since it was asked (``answering``: its first page came back) is alive and
is never given up on, or every holder of a popular key (a modality + body part has
a record from most sites) was given up on in favour of non-holders that answer in one
round trip, and the read missed most publishers (churn scenario, 100 nodes: recall
0.396).

``hops`` is the length of the referral chain to the first record holder (value lookup)
or to the closest node found: a seed from our own table is hop 1. Replies completing
in the same loop step are handled closest first, so a seeded virtual-time run is
deterministic.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from node.dht.ids import Contact
from node.dht.records import Record


@dataclass
class Reply:
    contacts: list[Contact]
    records: list[Record] = field(default_factory=list)
    rpcs: int = 1   # datagram round trips this reply took (value pages add to it)
    truncated: bool = False   # the holder had more records than one read takes


QueryFn = Callable[[Contact], Awaitable[Reply | None]]

_NEW, _ASKED, _OK, _FAILED, _SKIPPED, _SLOW, _GAVE_UP = range(7)
GRACE = 2.0   # a slow contact is waited for (when too few others answered) up to this × patience


@dataclass
class LookupStats:
    hops: int = 0
    rpcs: int = 0
    responses: int = 0
    timeouts: int = 0
    duration_s: float = 0.0


@dataclass
class LookupOutcome:
    closest: list[Contact]
    replies: dict[bytes, Reply]
    stats: LookupStats


class _Candidates:
    """Every contact heard of, by XOR distance to the target, with its state."""

    def __init__(self, target_id: bytes, self_id: bytes, skip: Callable[[bytes], bool]) -> None:
        self._target = int.from_bytes(target_id, "big")
        self._self_id = self_id
        self._skip = skip
        self.contacts: dict[bytes, Contact] = {}
        self.state: dict[bytes, int] = {}
        self.depth: dict[bytes, int] = {}
        self._order: list[bytes] = []

    def add(self, contact: Contact, depth: int) -> None:
        if contact.id == self._self_id or contact.id in self.contacts:
            return
        self.contacts[contact.id] = contact
        self.state[contact.id] = _SKIPPED if self._skip(contact.id) else _NEW
        self.depth[contact.id] = depth
        bisect.insort(self._order, contact.id, key=self.rank)

    def frontier(self, k: int) -> list[bytes]:
        """The k closest not failed, not given up on (and not skipped)."""
        alive = (i for i in self._order if self.state[i] in (_NEW, _ASKED, _SLOW, _OK))
        out = []
        for i in alive:
            out.append(i)
            if len(out) == k:
                break
        return out

    def unskip(self, count: int) -> bool:
        """Too few healthy candidates: give the closest suspects a chance."""
        revived = [i for i in self._order if self.state[i] == _SKIPPED][:count]
        for i in revived:
            self.state[i] = _NEW
        return bool(revived)

    def rank(self, node_id: bytes) -> int:
        return int.from_bytes(node_id, "big") ^ self._target


def _give_up_at(sent: float, wait: float, slowest: float | None) -> float:
    if slowest is None:
        return float("inf")      # nobody answered yet: no evidence that it is the contact
    return sent + GRACE * max(wait, slowest)


Answering = Callable[[bytes, float], bool]   # (node id, asked at): heard from it since?


def _next_change(in_flight: dict[asyncio.Future[Reply | None], bytes], cands: _Candidates,
                 asked_at: dict[bytes, tuple[float, float]], now: float,
                 slowest: float | None, answering: Answering, budget: int) -> float | None:
    """Seconds until the next in-flight contact turns slow or is given up on (none is
    given up on once the lookup's ``budget`` of give-ups is spent)."""
    times = []
    for node_id in in_flight.values():
        if node_id in asked_at and not answering(node_id, asked_at[node_id][0]):
            sent, wait = asked_at[node_id]
            if cands.state[node_id] == _ASKED:
                times.append(sent + max(wait, slowest or 0.0))
            elif cands.state[node_id] == _SLOW and budget > 0:
                times.append(_give_up_at(sent, wait, slowest))
    times = [t for t in times if t != float("inf")]
    return max(0.0, min(times) - now) if times else None


def _age(in_flight: dict[asyncio.Future[Reply | None], bytes], cands: _Candidates,
         asked_at: dict[bytes, tuple[float, float]], now: float,
         slowest: float | None, answering: Answering, budget: int) -> list[bytes]:
    """Move contacts past their patience to slow, past the grace to given up (returned,
    at most ``budget`` of them); a contact that is answering (paging) is neither."""
    given_up: list[bytes] = []
    for node_id in in_flight.values():
        if node_id not in asked_at:
            continue
        sent, wait = asked_at[node_id]
        if answering(node_id, sent):
            continue
        if cands.state[node_id] == _ASKED and now >= sent + max(wait, slowest or 0.0):
            cands.state[node_id] = _SLOW
        if (cands.state[node_id] == _SLOW and len(given_up) < budget
                and now >= _give_up_at(sent, wait, slowest)):
            cands.state[node_id] = _GAVE_UP
            given_up.append(node_id)
    return given_up


async def iterative_lookup(target_id: bytes, seeds: list[Contact], query: QueryFn,
                           k: int, alpha: int, self_id: bytes, *,
                           skip: Callable[[bytes], bool] = lambda node_id: False,
                           patience: Callable[[bytes], float] | None = None,
                           leftover: Callable[[list[asyncio.Future[Reply | None]]], None]
                           | None = None,
                           gave_up: Callable[[bytes], None] = lambda node_id: None,
                           answering: Answering = lambda node_id, since: False
                           ) -> LookupOutcome:
    loop = asyncio.get_running_loop()
    started = loop.time()
    stats = LookupStats()
    cands = _Candidates(target_id, self_id, skip)
    for seed in seeds:
        cands.add(seed, 0)
    replies: dict[bytes, Reply] = {}
    in_flight: dict[asyncio.Future[Reply | None], bytes] = {}
    asked_at: dict[bytes, tuple[float, float]] = {}   # node id -> (sent, patience)
    slowest: float | None = None                       # longest round trip answered so far
    give_ups = k // 2   # lateness is not death: the rest of the k closest get their full deadline
    try:
        while True:
            frontier = cands.frontier(k)
            settled = bool(frontier) and all(cands.state[i] == _OK for i in frontier)
            hoping = any(cands.state[i] in (_ASKED, _SLOW) for i in in_flight.values())
            if settled and (len(frontier) >= k or not hoping):
                break   # the k closest live contacts have all answered
            busy = sum(1 for i in in_flight.values() if cands.state[i] == _ASKED)
            spares = sum(1 for i in frontier if cands.state[i] == _SLOW)
            for node_id in cands.frontier(k + spares):
                if busy >= alpha or len(in_flight) >= alpha + (alpha + 1) // 2:
                    break   # slow contacts take no slot, but at most α/2 extra RPCs fly
                if cands.state[node_id] == _NEW:
                    cands.state[node_id] = _ASKED
                    in_flight[asyncio.ensure_future(query(cands.contacts[node_id]))] = node_id
                    busy += 1
                    if patience is not None:
                        asked_at[node_id] = (loop.time(), patience(node_id))
            if not in_flight:
                if len(frontier) < k and cands.unskip(k - len(frontier)):
                    continue
                break
            done, _ = await asyncio.wait(
                in_flight, timeout=_next_change(in_flight, cands, asked_at, loop.time(), slowest,
                                                answering, give_ups),
                return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            for task in done:
                node_id = in_flight[task]
                if node_id in asked_at and not task.cancelled() and task.result() is not None:
                    slowest = max(slowest or 0.0, now - asked_at[node_id][0])
            for node_id in _age(in_flight, cands, asked_at, now, slowest, answering, give_ups):
                give_ups -= 1
                gave_up(node_id)
            for task in sorted(done, key=lambda t: cands.rank(in_flight[t])):
                node_id = in_flight.pop(task)
                reply = task.result()
                if reply is None:
                    stats.rpcs += 1
                    stats.timeouts += 1
                    cands.state[node_id] = _FAILED
                    continue
                stats.rpcs += reply.rpcs
                stats.responses += 1
                replies[node_id] = reply
                cands.state[node_id] = _OK
                for found in reply.contacts:
                    cands.add(found, cands.depth[node_id] + 1)
    finally:
        stats.rpcs += len(in_flight)   # sent, not waited for
        if leftover is not None and in_flight:
            leftover(list(in_flight))
        else:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
    closest = [cands.contacts[i] for i in cands.frontier(k) if i in replies]
    holders = [cands.depth[i] for i, r in replies.items() if r.records]
    if holders:
        stats.hops = min(holders) + 1
    elif closest:
        stats.hops = cands.depth[closest[0].id] + 1
    stats.duration_s = loop.time() - started
    return LookupOutcome(closest, replies, stats)
