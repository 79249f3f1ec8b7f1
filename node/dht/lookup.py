"""Iterative α-parallel Kademlia lookup, independent of sockets.

Upstream's crawler (kept: its ``NodeHeap`` of the k nearest, contacted-set and
stop rule "all k nearest have been asked") runs in lock-step rounds that wait for the
slowest of α replies, so one dead peer stalls a round for a whole timeout. Here α
queries are kept in flight at all times: whenever one answers, the next nearest
unasked contact is queried. Value lookups do not stop at the first holder — a key has
many publishers and holders may differ, so replies are collected until the k nearest
are settled.

``hops`` is the length of the referral chain to the first record holder (value
lookup) or to the closest node found: a seed from our own table is hop 1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kademlia.node import NodeHeap

from node.dht.ids import Contact, target
from node.dht.records import Record


@dataclass
class Reply:
    contacts: list[Contact]
    records: list[Record] = field(default_factory=list)
    rpcs: int = 1   # datagram round trips this reply took (value pages add to it)


QueryFn = Callable[[Contact], Awaitable[Reply | None]]


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


async def iterative_lookup(target_id: bytes, seeds: list[Contact], query: QueryFn,
                           k: int, alpha: int, self_id: bytes) -> LookupOutcome:
    started = time.monotonic()
    stats = LookupStats()
    nearest = NodeHeap(target(target_id), k)
    depth: dict[bytes, int] = {}
    for seed in seeds:
        if seed.id != self_id and seed.id not in depth:
            depth[seed.id] = 0
            nearest.push(seed)
    failed: set[bytes] = set()
    replies: dict[bytes, Reply] = {}
    in_flight: dict[asyncio.Task[Reply | None], Contact] = {}
    try:
        while True:
            for contact in nearest.get_uncontacted():
                if len(in_flight) >= alpha:
                    break
                nearest.mark_contacted(contact)
                in_flight[asyncio.ensure_future(query(contact))] = contact
            if not in_flight:
                break
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                contact = in_flight.pop(task)
                reply = task.result()
                if reply is None:
                    stats.rpcs += 1
                    stats.timeouts += 1
                    failed.add(contact.id)
                    nearest.remove([contact.id])
                    continue
                stats.rpcs += reply.rpcs
                stats.responses += 1
                replies[contact.id] = reply
                fresh = [c for c in reply.contacts if c.id != self_id
                         and c.id not in depth and c.id not in failed]
                for found in fresh:
                    depth[found.id] = depth[contact.id] + 1
                nearest.push(fresh)
    finally:
        for task in in_flight:
            task.cancel()
    closest = [c for c in nearest if c.id in replies]
    holders = [depth[i] for i, r in replies.items() if r.records]
    if holders:
        stats.hops = min(holders) + 1
    elif closest:
        stats.hops = depth[closest[0].id] + 1
    stats.duration_s = time.monotonic() - started
    return LookupOutcome(closest, replies, stats)
