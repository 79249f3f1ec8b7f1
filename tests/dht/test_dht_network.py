"""DHT nodes on real UDP sockets on 127.0.0.1: publish / get across a network,
many publishers per key, expiry, republish, restart from the JSON routing table,
the link-model seam, deadlines and clean start/stop."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

import pytest

from node.dht.cluster import start_cluster
from node.dht.config import DHTConfig, DHTConfigError
from node.dht.link import UniformLink
from node.dht.membership import StaticMembership
from node.dht.records import PayloadKind
from node.dht.routing_state import RoutingStateError
from node.dht.server import DHTServer, DHTStateError
from node.identity import NodeIdentity
from tests.dht_support import LOADED


async def test_every_node_finds_every_key_with_records_from_several_publishers() -> None:
    cluster = await start_cluster(20, LOADED)
    try:
        nodes = cluster.servers
        keys = [os.urandom(32) for _ in range(5)]
        results = await asyncio.gather(*(n.publish(keys[i % 5], i) for i, n in enumerate(nodes)))
        assert all(r.accepted + r.stored_locally >= 8 for r in results)
        gate = asyncio.Semaphore(8)   # 100 lookups at once would measure the host, not the DHT

        async def get(node: DHTServer, key: bytes):  # type: ignore[no-untyped-def]
            async with gate:
                return await node.get(key)

        gets = await asyncio.gather(*(get(n, k) for n in nodes for k in keys))
        for j, got in enumerate(gets):
            k = j % 5
            want = {(nodes[i].node_id, i) for i in range(20) if i % 5 == k}
            assert {(r.publisher, r.count) for r in got.records} == want
            assert got.lookup.rpcs >= 1 and got.lookup.hops >= 1
        hops = [g.lookup.hops for g in gets]
        print(f"20 nodes: mean hops {statistics.mean(hops):.2f}, "
              f"rpcs/lookup {statistics.mean(g.lookup.rpcs for g in gets):.1f}")
    finally:
        await cluster.stop()


async def test_a_key_with_many_publishers_is_read_in_bounded_pages() -> None:
    cluster = await start_cluster(20, LOADED)
    try:
        key = os.urandom(32)
        for node in cluster.servers:
            await node.publish(key, 1, PayloadKind.BUNDLE_ID, os.urandom(32))
        got = await cluster.servers[3].get(key)
        assert {r.publisher for r in got.records} == {n.node_id for n in cluster.servers}
        assert got.lookup.rpcs > got.lookup.responses     # follow-up pages were fetched
    finally:
        await cluster.stop()


async def test_newer_record_from_same_publisher_replaces_older() -> None:
    cluster = await start_cluster(10, LOADED)
    try:
        key = os.urandom(32)
        await cluster.servers[1].publish(key, 5)
        await cluster.servers[1].publish(key, 6)
        got = await cluster.servers[7].get(key)
        assert [r.count for r in got.records] == [6]
    finally:
        await cluster.stop()


async def test_expired_records_vanish_and_are_swept() -> None:
    cluster = await start_cluster(8, DHTConfig(maintenance_interval=60, rpc_timeout=10))
    try:
        key = os.urandom(32)
        ttl = 4.0                                          # slack for a loaded host
        await cluster.servers[0].publish(key, 3, ttl=ttl)
        cluster.servers[0].unpublish(key)                 # no republish
        found = (await cluster.servers[5].get(key)).records
        assert len(found) == 1
        await asyncio.sleep(max(0.0, found[0].expires_ms / 1000 - time.time()) + 0.1)
        assert (await cluster.servers[5].get(key)).records == []
        for node in cluster.servers:
            await node.maintain_once()
        assert sum([await n.keeper.store.count() for n in cluster.servers]) == 0
        assert sum(n.stats["records_expired"] for n in cluster.servers) >= 7
    finally:
        await cluster.stop()


async def test_republish_keeps_records_alive() -> None:
    cluster = await start_cluster(8, DHTConfig(maintenance_interval=0.1, rpc_timeout=10))
    try:
        key = os.urandom(32)
        publisher = cluster.servers[2]
        await publisher.publish(key, 4, ttl=3.0)
        first = (await cluster.servers[6].get(key)).records[0]
        while publisher.stats["records_republished"] < 2:  # republished at half life
            await asyncio.sleep(0.05)
        again = (await cluster.servers[6].get(key)).records
        assert [r.count for r in again] == [4]
        assert again[0].issued_ms > first.issued_ms and publisher.stats["records_republished"] >= 2
    finally:
        await cluster.stop()


async def test_routing_table_survives_restart_as_json(tmp_path) -> None:
    cluster = await start_cluster(12, LOADED)
    path = tmp_path / "routing.json"
    me = NodeIdentity.generate()
    cluster.membership.add(me.verify_key)
    node = DHTServer(me, cluster.membership, DHTConfig(rpc_timeout=10, routing_path=path))
    try:
        await node.start()
        assert await node.bootstrap([cluster.servers[0].address]) >= 8
        key = os.urandom(32)
        await cluster.servers[4].publish(key, 9)
        await node.stop()
        raw = path.read_bytes()
        assert not raw.startswith(b"\x80")                 # not a pickle
        saved = json.loads(raw)["contacts"]
        assert len(saved) >= 8
        reborn = DHTServer(me, cluster.membership, DHTConfig(rpc_timeout=10, routing_path=path))
        await reborn.start()
        try:
            assert {c.id for c in reborn.routing.contacts()} == \
                   {bytes.fromhex(c["id"]) for c in saved}
            assert [r.count for r in (await reborn.get(key)).records] == [9]
        finally:
            await reborn.stop()
    finally:
        await node.stop()
        await cluster.stop()


async def test_link_model_delays_and_drops_outgoing_datagrams() -> None:
    cluster = await start_cluster(10, DHTConfig(rpc_timeout=2.0),
                                  link_factory=lambda: UniformLink(latency=0.01))
    try:
        a, b = cluster.servers[1], cluster.servers[2]
        rtt = await a.ping(b.address)
        assert rtt is not None and rtt >= 0.02
        key = os.urandom(32)
        await cluster.servers[3].publish(key, 1)
        lossy = cluster.servers[4]
        lossy.link = UniformLink(loss=0.3)
        found = [len((await lossy.get(key)).records) for _ in range(5)]
        assert lossy.stats["dropped_link"] > 0
        assert max(found) == 1
    finally:
        await cluster.stop()


async def test_ping_round_trip_and_rpc_deadline() -> None:
    cluster = await start_cluster(2, DHTConfig(rpc_timeout=1.0))
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        a, b = cluster.servers
        rtts = [await a.ping(b.address) for _ in range(50)]
        assert all(r is not None for r in rtts)
        print(f"signed DHT ping RTT on loopback: median {statistics.median(rtts) * 1e3:.2f} ms")
        started = time.monotonic()
        assert await a.ping(silent[0].get_extra_info("sockname")) is None
        assert 1.0 <= time.monotonic() - started < 30  # the deadline, not forever
        assert a.stats["rpc_timeouts"] == 1
    finally:
        silent[0].close()
        await cluster.stop()


async def test_k20_publishes_to_twenty_holders() -> None:
    cluster = await start_cluster(25, DHTConfig(k=20, rpc_timeout=10))
    try:
        result = await cluster.servers[0].publish(os.urandom(32), 1)
        assert result.accepted == 20 and result.lookup.rpcs >= 20
    finally:
        await cluster.stop()


async def test_start_stop_are_clean_and_misuse_is_a_clear_error() -> None:
    me = NodeIdentity.generate()
    node = DHTServer(me, StaticMembership({me.verify_key}))
    with pytest.raises(DHTStateError, match="start"):
        await node.get(os.urandom(32))
    host, port = await node.start()
    with pytest.raises(DHTStateError, match="already"):
        await node.start()
    other = DHTServer(NodeIdentity.generate(), StaticMembership())
    with pytest.raises(DHTStateError, match="choose a free DHT port"):
        await other.start(host, port)
    result = await node.publish(os.urandom(32), 2)        # alone: kept locally
    assert result.stored_locally and result.accepted == 0
    await node.stop()
    await node.stop()
    assert len(node._tasks) == 0
    await node.start()
    await node.stop()
    with pytest.raises(DHTConfigError, match="alpha"):
        DHTConfig(k=8, alpha=9)
    with pytest.raises(DHTConfigError, match="k must be"):
        DHTConfig(k=21)


async def test_unusable_routing_file_is_a_clear_error_and_stop_still_completes(tmp_path) -> None:
    me = NodeIdentity.generate()
    members = StaticMembership({me.verify_key})
    corrupt = tmp_path / "routing.json"
    corrupt.write_text('{"version": 1, "node_id": "' + me.node_id_hex + '", "contacts": 7}')
    with pytest.raises(RoutingStateError, match="corrupt"):
        await DHTServer(me, members, DHTConfig(routing_path=corrupt)).start()
    blocker = tmp_path / "not-a-folder"
    node = DHTServer(me, members, DHTConfig(routing_path=blocker / "routing.json"))
    await node.start()
    blocker.write_text("x")                 # the folder is now a file: writes must fail
    with pytest.raises(RoutingStateError, match="cannot write"):
        node.save_routing_table()
    await node.stop()
    assert node.stats["routing_save_errors"] == 1
