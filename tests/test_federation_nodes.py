"""Full nodes joined into one federation: peer API over mTLS and the DHT come up."""

from __future__ import annotations

from pathlib import Path

from node.testing_federation import start_federation


async def test_three_nodes_talk_over_mtls_and_dht(tmp_path: Path) -> None:
    fed = await start_federation(tmp_path, ["north", "south", "east"])
    try:
        north, south, _east = fed.nodes
        assert all(n.ports.peer and n.ports.dht for n in fed.nodes)
        member = north.membership.roster.member(south.node_id)
        reply = await north.client.call(member, "GET", "/v1/roster", timeout=5)
        assert reply  # south answered over mutual TLS with its roster
        key = b"k" * 32
        await north.dht.publish(key, 3)
        found = await south.dht.get(key)
        assert [r.publisher for r in found.records] == [bytes.fromhex(north.node_id)]
    finally:
        await fed.stop()
