"""Routing table: exact k-closest against a brute-force oracle (ours passes, upstream
kademlia 2.2.3 fails the same oracle), bucket boundaries, and JSON persistence."""

from __future__ import annotations

import heapq
import json
import random

import pytest
from kademlia.node import Node
from kademlia.routing import RoutingTable as UpstreamTable

from node.dht.ids import ID_MAX, Contact, int_to_id
from node.dht.routing import RoutingTable
from node.dht.routing_state import (RoutingStateError, dump_contacts, load_contacts,
                                    load_routing_file, save_routing_file)
from node.identity import NodeIdentity


def oracle(table_contacts: list, probe: Node, k: int) -> list[bytes]:
    """Brute force: the k contacts in the table closest to ``probe``."""
    return [c.id for c in heapq.nsmallest(k, table_contacts,
                                          key=lambda c: c.long_id ^ probe.long_id)]


def in_table(table) -> list:
    return [c for bucket in table.buckets for c in bucket.get_nodes()]


def contacts(n: int) -> list[Contact]:
    return [Contact(NodeIdentity.generate().verify_key, "127.0.0.1", 10000 + i)
            for i in range(n)]


class _NoPing:
    """Upstream's table pings a full bucket's head through its protocol object."""

    async def call_ping(self, node: Node) -> None:
        return None


def mismatch_rate(table, targets: list[Node], k: int) -> tuple[float, float]:
    wrong = short = 0
    everything = in_table(table)
    for probe in targets:
        got = [c.id for c in table.find_neighbors(probe, k)]
        want = oracle(everything, probe, k)
        wrong += got != want
        short += len(got) < len(want)
    return wrong / len(targets), short / len(targets)


@pytest.mark.parametrize("k", [8, 20])
def test_find_neighbors_returns_true_k_closest(k: int) -> None:
    rng = random.Random(1)
    peers = contacts(100)
    table = RoutingTable(peers[0], k)
    for peer in peers[1:]:
        table.add_contact(peer)
    assert len(table) > k                       # the table is non-trivial
    targets = [Node(int_to_id(rng.getrandbits(256))) for _ in range(100)]
    targets += [Node(p.id) for p in peers[1:21]]
    wrong, short = mismatch_rate(table, targets, k)
    assert (wrong, short) == (0.0, 0.0)


async def test_upstream_find_neighbors_fails_the_same_oracle() -> None:
    rng = random.Random(1)
    ids = [rng.getrandbits(160).to_bytes(20, "big") for _ in range(100)]
    table = UpstreamTable(_NoPing(), 8, Node(ids[0]))
    for i, node_id in enumerate(ids[1:]):
        table.add_contact(Node(node_id, "127.0.0.1", 10000 + i))
    targets = [Node(rng.getrandbits(160).to_bytes(20, "big")) for _ in range(100)]
    wrong, short = mismatch_rate(table, targets, 8)
    print(f"upstream find_neighbors: {wrong:.0%} not the true 8 closest, {short:.0%} too few")
    assert wrong >= 0.5       # measured 72% with this seed; ours is 0% on the same oracle


def test_id_on_a_split_midpoint_lands_in_the_bucket_that_covers_it() -> None:
    table = RoutingTable(Node(int_to_id(0)), 2)
    table.split_bucket(0)
    midpoint = ID_MAX // 2
    probe = Node(int_to_id(midpoint))
    assert table.buckets[table.get_bucket_for(probe)].has_in_range(probe)
    upstream = UpstreamTable(_NoPing(), 2, Node(bytes(20)))
    upstream.split_bucket(0)
    up_probe = Node(((2**160) // 2).to_bytes(20, "big"))
    assert not upstream.buckets[upstream.get_bucket_for(up_probe)].has_in_range(up_probe)


def test_full_bucket_probes_its_oldest_contact_and_never_adds_self() -> None:
    probed: list[Contact] = []
    peers = contacts(60)
    table = RoutingTable(peers[0], 2, on_full=probed.append)
    table.add_contact(peers[0])
    for peer in peers[1:]:
        table.add_contact(peer)
    assert all(c.id != peers[0].id for c in table.contacts())
    assert probed and all(isinstance(c, Contact) for c in probed)
    assert table.get_contact(probed[0].id) is probed[0]


def test_routing_state_roundtrip_is_json_and_checked(tmp_path) -> None:
    me = NodeIdentity.generate()
    peers = contacts(5)
    path = tmp_path / "routing.json"
    save_routing_file(path, me.node_id, peers)
    data = json.loads(path.read_text())       # plain JSON, nothing executable
    assert {e["host"] for e in data["contacts"]} == {"127.0.0.1"}
    loaded = load_routing_file(path, me.node_id)
    assert [(c.id, c.verify_key, c.port) for c in loaded] == \
           [(c.id, c.verify_key, c.port) for c in peers]
    assert load_routing_file(tmp_path / "absent.json", me.node_id) == []


@pytest.mark.parametrize("mutate", [
    lambda d: d["contacts"][0].update(id="00" * 32),          # id is not hash(key)
    lambda d: d["contacts"][0].update(host="example.org"),    # DNS name, not an IP
    lambda d: d["contacts"][0].update(port=70000),
    lambda d: d.update(version=99),
    lambda d: d["contacts"].append("junk"),
])
def test_corrupt_routing_state_is_refused_with_a_hint(mutate) -> None:
    me = NodeIdentity.generate()
    data = json.loads(dump_contacts(me.node_id, contacts(2)))
    mutate(data)
    with pytest.raises(RoutingStateError, match="Delete"):
        load_contacts(json.dumps(data), me.node_id)
    with pytest.raises(RoutingStateError, match="corrupt"):
        load_contacts("{not json", me.node_id)
    with pytest.raises(RoutingStateError, match="another node"):
        load_contacts(dump_contacts(NodeIdentity.generate().node_id, []), me.node_id)


def test_find_neighbors_in_bucket_order_matches_a_full_scan_on_a_large_table() -> None:
    """Buckets visited in XOR order (not every contact scanned) give the exact answer,
    also with a contact excluded and for targets inside the table."""
    rng = random.Random(7)
    me = Contact(NodeIdentity.generate().verify_key, "127.0.0.1", 9999)
    table = RoutingTable(me, 8)
    for peer in contacts(600):
        table.add_contact(peer)
    everything = in_table(table)
    assert len(table.buckets) > 8 and len(everything) > 64
    for _ in range(200):
        probe = Node(int_to_id(rng.getrandbits(256)))
        assert [c.id for c in table.find_neighbors(probe, 8)] == oracle(everything, probe, 8)
    for member in everything[:50]:
        got = [c.id for c in table.find_neighbors(Node(member.id), 8, exclude=member)]
        want = oracle([c for c in everything if c.id != member.id], Node(member.id), 8)
        assert got == want and member.id not in got


def test_bucket_depth_is_upstreams_shared_prefix() -> None:
    from kademlia.utils import bytes_to_bit_string, shared_prefix
    table = RoutingTable(Contact(NodeIdentity.generate().verify_key, "127.0.0.1", 1), 4)
    for peer in contacts(300):
        table.add_contact(peer)
    for bucket in table.buckets:
        ids = [n.id for n in bucket.nodes.values()]
        if ids:
            want = len(shared_prefix([bytes_to_bit_string(i) for i in ids]))
            assert bucket.depth() == want


def test_bucket_bounds_follow_splits() -> None:
    table = RoutingTable(Node(int_to_id(0)), 2)
    for peer in contacts(200):
        table.add_contact(peer)
        for c in table.contacts():
            assert table.buckets[table.get_bucket_for(c)].has_in_range(c)
            assert table.get_contact(c.id) is c
    table.flush()
    assert len(table.buckets) == 1 and table.get_bucket_for(Node(int_to_id(ID_MAX))) == 0


def test_lonely_buckets_follow_the_injected_clock() -> None:
    """The table reads bucket ages from its clock (the DHT's event loop: virtual time in
    the simulator), not from time.monotonic."""
    now = [1000.0]
    table = RoutingTable(Node(int_to_id(0)), 2, lonely_after=3600.0, clock=lambda: now[0])
    for peer in contacts(40):
        table.add_contact(peer)
    assert table.lonely_buckets() == []
    now[0] += 3601.0
    assert table.lonely_buckets() == table.buckets
    probe = table.contacts()[0]
    table.find_neighbors(Node(probe.id), 2)      # a lookup into a bucket touches it
    lonely = table.lonely_buckets()
    assert table.buckets[table.get_bucket_for(probe)] not in lonely
    assert len(lonely) == len(table.buckets) - 1
