"""The DHT follows the roster: a member admitted after the others started is contacted by
them as soon as they adopt the roster naming it; a revoked member leaves every routing
table. Real nodes (mTLS peer API for the roster, UDP for the DHT) in one event loop; the
new node runs no service that would bootstrap its DHT, so only the roster can tell the
others about it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from node.net.federation import operator_ca, revoke
from node.net.handover import hand_over
from node.node import Node
from node.testing.federation import start_federation

DEADLINE_S = 120.0   # generous: the suite must pass on a loaded machine


async def wait_until(check: Callable[[], bool], what: str) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > DEADLINE_S:
            raise AssertionError(f"not within {DEADLINE_S:.0f} s: {what}")
        await asyncio.sleep(0.05)


def routing_ids(node: Node) -> set[str]:
    assert node.dht is not None
    return {c.id.hex() for c in node.dht.routing.contacts()}


async def test_dht_learns_members_of_later_rosters_and_forgets_revoked_ones(
        tmp_path: Path) -> None:
    fed = await start_federation(tmp_path, ["a", "b"])          # a and b bootstrap their DHT
    try:
        a, b = fed.nodes
        assert routing_ids(a) == {b.node_id} and routing_ids(b) == {a.node_id}
        c = await fed.join(tmp_path, "c")        # starts; its gossip offers its roster
        await wait_until(lambda: {a.membership.roster.current.version,
                                  b.membership.roster.current.version}
                         == {c.membership.roster.current.version}, "a and b adopt c's roster")
        await wait_until(lambda: c.node_id in routing_ids(a) and c.node_id in routing_ids(b),
                         "a and b put c in their DHT routing tables")
        await wait_until(lambda: routing_ids(c) == {a.node_id, b.node_id},
                         "c learns a and b from their pings")
        key = b"k" * 32
        assert c.dht is not None
        published = await c.dht.publish(key, 1)
        assert published.accepted == 2               # a and b hold c's record

        signed = revoke(fed.operator_dir, b.node_id)
        entry = a.membership.roster.member(a.node_id)
        await hand_over(operator_ca(fed.operator_dir), signed, entry.peer_address, timeout=60)
        await wait_until(lambda: all(n.membership.roster.current.version == signed.roster.version
                                     for n in (a, c)), "a and c adopt the revoking roster")
        await wait_until(lambda: b.node_id not in routing_ids(a) | routing_ids(c),
                         "the revoked member leaves every routing table")
        assert routing_ids(a) == {c.node_id} and routing_ids(c) == {a.node_id}
        assert a.dht is not None and a.dht.stats["contacts_removed_by_roster"] >= 1
    finally:
        await fed.stop()
