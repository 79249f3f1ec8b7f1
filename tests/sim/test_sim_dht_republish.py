"""A republish stores straight on the holders its last lookup found, and looks up again
only when that set may be stale, in virtual time.

Index records live 2 × 600 s and are republished every 600 s: at 1,000 simulated nodes
50,000 republishes in one hour, each a lookup and k STOREs, were ~70 % of all DHT
datagrams. Here one publisher's record is republished on a 12-node DHT (k = 4):
- while its k holders are live and its own table knows no closer contact, a republish
  sends k STOREs and no FIND_NODE, and every holder has the new record;
- when a holder has gone, the republish looks the key up again and the record lands on
  the k closest live nodes (the next closest takes the place of the one gone);
- when a node closer to the key than the farthest holder is in its table (joined or
  came back), the republish looks up again and places the record on it;
- past ``republish_lookup_after`` a lookup is done whatever the holders say.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from node.dht.config import DHTConfig
from node.dht.ids import Contact, distance
from node.dht.membership import StaticMembership
from node.dht.server import DHTServer
from node.dht.messages import Kind
from node.dht.wire import read_header
from node.identity import NodeIdentity
from sim.netmodel import NetModel
from sim.network import HostTransport, SimNetwork
from sim.vclock import run_virtual

PORT = 4436
K = 4
N = 12
TTL = 120.0          # republished every 60 s (half life), maintenance every 5 s
CONFIG = DHTConfig(k=K, maintenance_interval=5.0, republish_lookup_after=600.0)


def _host(i: int) -> str:
    return f"10.9.0.{i + 1}"


async def _holding(servers: dict[int, DHTServer], key: bytes, issued_ms: int) -> set[int]:
    """Nodes that hold the publisher's record issued at ``issued_ms`` (or later)."""
    held = set()
    for i, server in servers.items():
        if server.running and any(r.issued_ms >= issued_ms
                                  for r in await server.keeper.store.get(key, server.now_ms())):
            held.add(i)
    return held


async def _scenario() -> dict[str, object]:
    network = SimNetwork(NetModel(latency_ms=10.0, jitter_ms=0.0), seed=1)
    ids = [NodeIdentity.from_seed(f"republish:{i}".encode()) for i in range(N + 1)]
    membership = StaticMembership({i.verify_key for i in ids})
    servers: dict[int, DHTServer] = {}
    sent: Counter[tuple[str, str]] = Counter()       # (sender host, kind) of each datagram

    def tap(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> None:
        sent[(src[0], Kind(read_header(data).kind).name)] += 1
    network.tap = tap

    async def start(i: int) -> DHTServer:
        network.add_host(_host(i), 0)
        server = DHTServer(ids[i], membership, CONFIG,
                           transport=HostTransport(network, _host(i)))
        await server.start(_host(i), PORT)
        servers[i] = server
        return server

    for i in range(N):
        await start(i)
    for i in range(1, N):
        await servers[i].bootstrap([servers[0].address])
    pub_i = 1
    publisher = servers[pub_i]
    key = ids[N].node_id            # node N (not started yet) will be the closest to it
    by_distance = sorted((i for i in range(N) if i != pub_i),
                         key=lambda i: distance(ids[i].node_id, key))
    figures: dict[str, object] = {}

    async def next_republish() -> int:
        done = publisher.stats["records_republished"]
        while publisher.stats["records_republished"] == done:
            await asyncio.sleep(1.0)
        return publisher._published[key].record.issued_ms

    def lookups_sent() -> int:
        return sent[(_host(pub_i), "FIND_NODE")]

    try:
        await publisher.publish(key, 3, ttl=TTL)
        figures["first_holders"] = await _holding(servers, key, 0)
        figures["closest"] = set(by_distance[:K])
        before = lookups_sent()
        issued = await next_republish()
        figures["quiet_find_nodes"] = lookups_sent() - before
        figures["quiet_holders"] = await _holding(servers, key, issued)
        figures["spared"] = publisher.stats["republish_lookups_spared"]

        gone = by_distance[0]                       # the closest holder leaves
        network.set_up(_host(gone), False)
        await servers[gone].stop()
        before = lookups_sent()
        issued = await next_republish()
        figures["gone_find_nodes"] = lookups_sent() - before
        figures["gone_holders"] = await _holding(servers, key, issued)
        figures["gone_closest"] = set(by_distance[1:K + 1])

        newcomer = await start(N)                   # joins next to the key
        await newcomer.bootstrap([servers[0].address])
        publisher.routing.add_contact(Contact(ids[N].verify_key, _host(N), PORT))
        before = lookups_sent()
        issued = await next_republish()
        figures["closer_find_nodes"] = lookups_sent() - before
        figures["closer_holders"] = await _holding(servers, key, issued)
        figures["needed"] = publisher.stats["republish_lookups_needed"]

        spared = publisher.stats["republish_lookups_spared"]
        await asyncio.sleep(CONFIG.republish_lookup_after)
        figures["after_bound_spared"] = publisher.stats["republish_lookups_spared"] - spared
    finally:
        await asyncio.gather(*(s.stop() for s in servers.values()))
    return figures


def test_a_republish_skips_the_lookup_only_while_its_holders_are_current() -> None:
    f = run_virtual(_scenario())
    assert f["first_holders"] == f["closest"]            # a first publish looks up
    assert f["quiet_find_nodes"] == 0                    # live holders: STOREs only
    assert f["quiet_holders"] == f["closest"]
    assert f["spared"] == 1
    assert f["gone_find_nodes"] > 0                      # a holder gone: looked up again
    assert f["gone_holders"] == f["gone_closest"]        # the next closest took its place
    assert f["closer_find_nodes"] > 0                    # a closer contact known: looked up
    assert N in f["closer_holders"] and len(f["closer_holders"]) == K
    assert f["needed"] == 1                              # (the closer contact: no STOREs first)
    # 600 s: ~10 republishes, one at least a full lookup once the holders are 600 s old
    assert 5 <= f["after_bound_spared"] < 10
