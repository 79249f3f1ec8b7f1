"""Full nodes joined into one federation: peer API over mTLS and the DHT come up."""

from __future__ import annotations

from pathlib import Path

from node.testing.federation import start_federation


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


async def test_dht_routing_table_survives_a_restart_as_json(tmp_path: Path) -> None:
    import json

    from node.node import Node

    fed = await start_federation(tmp_path, ["a", "b", "c"])
    try:
        a = fed.nodes[0]
        routing = a.cfg.data_dir / "dht-routing.json"
        await a.stop()
        fed.down.add(0)
        doc = json.loads(routing.read_text())  # JSON, not pickle
        assert len(json.dumps(doc)) > 100
        again = Node(a.cfg, a.identity, membership=a.membership)
        await again.start()
        try:
            assert again.dht is not None and len(again.dht.routing) >= 2
        finally:
            await again.stop()
    finally:
        await fed.stop()
