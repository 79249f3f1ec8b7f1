"""A non-member who captures a member's DHT datagrams cannot take over the member's
contact: re-sent to another node it is refused (the signed recipient id is not that
node), and re-sent from another port it moves nothing — a node changes a contact's
address only after the contact answers a challenge from the new address. A member that
really moves is followed once it answers."""

from __future__ import annotations

import asyncio
from typing import Any

from node.dht.cluster import start_cluster
from node.dht.ids import Address
from node.dht.membership import StaticMembership
from node.dht.messages import Kind
from node.dht.server import DHTServer
from node.dht.wire import ANYONE, read_header
from node.identity import NodeIdentity
from tests.dht.test_dht_hostile import open_probe
from tests.dht_support import LOADED as GENEROUS


class Tap:
    """Records what a node sends on the wire (what a sniffer on the path would see)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[tuple[bytes, Address]] = []

    def sendto(self, data: bytes, addr: Address) -> None:
        self.sent.append((data, addr))
        self.inner.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def tap(server: DHTServer) -> Tap:
    protocol = server._protocol
    assert protocol is not None and protocol.transport is not None
    wire = Tap(protocol.transport)
    protocol.transport = wire  # type: ignore[assignment]
    return wire


def address_of(server: DHTServer, member: DHTServer) -> Address | None:
    contact = server.routing.get_contact(member.node_id)
    return None if contact is None else contact.address


async def until(condition: Any, deadline_s: float = 60) -> None:
    """Wait for ``condition()`` (event-driven enough: checks every 20 ms, generous cap)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, "condition not reached within the deadline"
        await asyncio.sleep(0.02)


async def test_a_captured_datagram_resent_elsewhere_moves_and_evicts_no_one() -> None:
    cluster = await start_cluster(3, GENEROUS)
    a, b, c = cluster.servers
    transport, attacker = await open_probe()
    try:
        await until(lambda: address_of(b, a) == a.address and address_of(c, a) == a.address)
        wire = tap(a)
        found = await a.find_node(c.node_id)            # A asks B and C, addressed to each
        assert found is not None
        to_c = next(d for d, dest in wire.sent if dest == c.address and d[4] == Kind.FIND_NODE)
        assert read_header(to_c).recipient_id == c.node_id

        # 1. the datagram meant for C, re-sent to B from the attacker's port: refused
        transport.sendto(to_c, b.address)
        await until(lambda: b.stats["dropped_misaddressed"] == 1)
        assert await attacker.answer(0.5) is None
        assert address_of(b, a) == a.address

        # 2. A's bootstrap ping (addressed to anyone), re-sent to C from the attacker's port:
        # C answers it, but only challenges the new address instead of moving A there
        await a.ping(b.address)
        ping = next(d for d, dest in wire.sent if dest == b.address and d[4] == Kind.PING)
        assert read_header(ping).recipient_id == ANYONE
        transport.sendto(ping, c.address)
        challenge = await attacker.reply(Kind.PING)
        assert challenge is not None
        assert read_header(challenge).recipient_id == a.node_id
        assert c.stats["address_challenges"] >= 1
        assert address_of(c, a) == a.address
        # the attacker can only relay the challenge to A; A's answer comes from A's own
        # address, so it proves nothing about the attacker's port
        transport.sendto(challenge, a.address)
        for _ in range(3):                                  # C keeps reaching A where A is
            assert await c.find_node(a.node_id) is not None
        assert address_of(c, a) == a.address
        assert a.node_id in {x.id for x in c.routing.contacts()}, "A was not evicted"
        assert c.stats["contacts_evicted"] == 0
    finally:
        transport.close()
        await cluster.stop()


async def test_a_member_that_really_moves_is_followed_after_it_answers() -> None:
    cluster = await start_cluster(2, GENEROUS)
    a, b = cluster.servers
    moved = DHTServer(a.identity, cluster.membership, GENEROUS)
    try:
        await until(lambda: address_of(b, a) == a.address)
        old = a.address
        await a.stop()
        await moved.start("127.0.0.1", 0)
        assert moved.address != old
        assert await moved.ping(b.address) is not None     # B hears A from a new port...
        await until(lambda: address_of(b, a) == moved.address)   # ...and follows once proven
        assert b.stats["address_challenges"] >= 1
    finally:
        await moved.stop()
        await b.stop()


class ListedMembership(StaticMembership):
    """Members with the DHT addresses a signed roster would list for them."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: dict[bytes, Address] = {}

    def listed_address(self, verify_key: bytes) -> Address | None:
        return self.listed.get(verify_key)


async def test_the_roster_listed_address_needs_no_challenge_and_a_replay_elsewhere_still_does() -> None:
    membership = ListedMembership()
    ids = [NodeIdentity.generate() for _ in range(3)]
    for identity in ids:
        membership.add(identity.verify_key)
    a, b, c = (DHTServer(i, membership, GENEROUS) for i in ids)
    transport, attacker = await open_probe()
    try:
        for server in (a, b, c):
            await server.start("127.0.0.1", 0)
            membership.listed[server.identity.verify_key] = server.address
        wire = tap(a)
        assert await a.ping(b.address) is not None          # a request from a listed address
        await until(lambda: address_of(b, a) == a.address)
        assert b.stats["addresses_roster_listed"] == 1 and b.stats["address_challenges"] == 0
        ping = next(d for d, dest in wire.sent if dest == b.address and d[4] == Kind.PING)
        transport.sendto(ping, c.address)                   # replayed from another port
        assert await attacker.reply(Kind.PING) is not None  # C challenges that port
        await asyncio.sleep(0.2)
        assert c.stats["address_challenges"] == 1 and c.stats["addresses_roster_listed"] == 0
        assert address_of(c, a) is None                     # nothing learnt from the replay
        transport.sendto(ping, b.address)                   # and B does not move A there
        await asyncio.sleep(0.2)
        assert address_of(b, a) == a.address and b.stats["addresses_roster_listed"] == 1
    finally:
        transport.close()
        for server in (a, b, c):
            await server.stop()
