"""A key with many publishers over real UDP on 127.0.0.1: a holder's records are read in
publisher-id ranges side by side (``node.dht.value_spans``), every record arrives, and a
read that runs out of pages says so (``truncated``) instead of passing for complete."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from node.dht.cluster import Cluster, start_cluster
from node.dht.config import DHTConfig
from node.dht.records import sign_record
from node.dht.server import GetResult
from node.identity import NodeIdentity
from tests.dht_support import LOADED

PUBLISHERS = 200      # ~29 pages of ~7 records


async def _held_by_one(cluster: Cluster, key: bytes, count: int) -> set[bytes]:
    """``count`` members' records under ``key``, stored on the first node only."""
    holder = cluster.servers[0]
    now = holder.now_ms()
    publishers = set()
    for _ in range(count):
        who = NodeIdentity.generate()
        cluster.membership.add(who.verify_key)
        await holder.keeper.accept(sign_record(who, key, 1, now, now + 600_000))
        publishers.add(who.node_id)
    return publishers


def _count_in_flight(reader: Any) -> dict[str, int]:
    """Wrap the reader's page request to see how many run at once."""
    client = reader._rpc()
    original = client._values_page
    seen = {"now": 0, "most": 0, "pages": 0}

    async def counted(contact, request):  # type: ignore[no-untyped-def]
        seen["now"] += 1
        seen["pages"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            return await original(contact, request)
        finally:
            seen["now"] -= 1

    client._values_page = counted
    return seen


async def _read(config: DHTConfig) -> tuple[GetResult, set[bytes], dict[str, int]]:
    """PUBLISHERS records on one node, read by the other: (what it got, who published,
    how many page requests ran at once / in all)."""
    cluster = await start_cluster(2, config)
    try:
        key = os.urandom(32)
        publishers = await _held_by_one(cluster, key, PUBLISHERS)
        reader = cluster.servers[1]
        seen = _count_in_flight(reader)
        return await reader.get(key), publishers, seen
    finally:
        await cluster.stop()


async def test_many_publishers_are_read_in_ranges_side_by_side() -> None:
    got, publishers, seen = await _read(LOADED)
    assert {r.publisher for r in got.records} == publishers     # none lost between ranges
    assert not got.truncated
    assert seen["most"] >= 4, seen         # ranges were paged at the same time
    # one page per ~7 records, plus at most one overlap page per range
    assert seen["pages"] <= PUBLISHERS // 7 + 2 + LOADED.max_value_streams, seen


async def test_one_range_at_a_time_reads_the_same_records() -> None:
    """The check above can fail: with one stream the pages go one after another."""
    got, publishers, seen = await _read(replace(LOADED, max_value_streams=1))
    assert {r.publisher for r in got.records} == publishers
    assert seen["most"] == 1


async def test_a_read_that_runs_out_of_pages_is_marked_truncated() -> None:
    got, publishers, _seen = await _read(replace(LOADED, max_value_pages=4))
    assert got.truncated
    assert 0 < len(got.records) < len(publishers)
