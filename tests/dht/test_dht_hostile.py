"""Hostile input on real loopback UDP: forged / non-member records on store and on read
(including a holder that serves forgeries), non-member nodes, ids that do not match
their key, and garbage / truncated / oversized / unsigned / replayed / stale datagrams —
all dropped without harm and counted in ``server.stats``."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import time

from node.dht.cluster import Cluster, start_cluster
from node.dht.membership import StaticMembership
from node.dht.messages import Kind, StoreRequest, StoreStatus, decode_store_ack
from node.dht.records import sign_record
from node.dht.server import DHTServer
from node.dht.pairkeys import PairKeys
from node.dht.wire import open_datagram, seal
from node.identity import NodeIdentity

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Probe(asyncio.DatagramProtocol):
    """A raw UDP client: sends hand-made datagrams, collects whatever comes back."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.inbox.put_nowait(data)

    async def answer(self, timeout: float = 30) -> bytes | None:
        """The next datagram; a generous deadline, since a loaded host may be slow."""
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None

    async def reply(self, kind: Kind, timeout: float = 30) -> bytes | None:
        """The next datagram of ``kind``, skipping others (e.g. an address challenge)."""
        while (data := await self.answer(timeout)) is not None:
            if data[4] == kind:
                return data
        return None


async def open_probe() -> tuple[asyncio.DatagramTransport, Probe]:
    return await asyncio.get_running_loop().create_datagram_endpoint(
        Probe, local_addr=("127.0.0.1", 0))  # type: ignore[return-value]


def forged_variants(honest, key: bytes, member: NodeIdentity, outsider: NodeIdentity):
    """A tampered copy of an honest record (newer, bigger count, old signature), a
    validly signed record by a non-member, and a member's record moved to another key."""
    t = now_ms()
    tampered = dataclasses.replace(honest, count=999, issued_ms=honest.issued_ms + 1)
    stranger = sign_record(outsider, key, 5, t, t + HOUR_MS)
    moved = dataclasses.replace(sign_record(member, os.urandom(32), 5, t, t + HOUR_MS), key=key)
    return [tampered, stranger, moved]


async def test_forged_records_are_refused_on_store() -> None:
    cluster = await start_cluster(3)
    prober, outsider = NodeIdentity.generate(), NodeIdentity.generate()
    cluster.membership.add(prober.verify_key)
    transport, probe = await open_probe()
    try:
        target = cluster.servers[1]
        key = os.urandom(32)
        t = now_ms()
        honest = sign_record(cluster.servers[0].identity, key, 3, t, t + HOUR_MS)
        statuses = []
        for record in [*forged_variants(honest, key, prober, outsider), honest]:
            body = StoreRequest(record).encode()
            transport.sendto(seal(prober, Kind.STORE, os.urandom(8), now_ms(), body,
                                  target.node_id), target.address)
            reply = open_datagram(await probe.reply(Kind.STORE_ACK), cluster.membership,
                                  prober.node_id, PairKeys(prober))
            statuses.append(decode_store_ack(reply.body))
        assert statuses == [StoreStatus.REJECTED] * 3 + [StoreStatus.STORED]
        assert target.stats["store_rejected"] == 3
        assert [(r.count, r.publisher) for r in await target.keeper.store.get(key, now_ms())] \
            == [(3, cluster.servers[0].node_id)]
    finally:
        transport.close()
        await cluster.stop()


async def test_reader_drops_forged_records_served_by_a_malicious_holder() -> None:
    cluster = await start_cluster(20)
    try:
        nodes = cluster.servers
        evil = nodes[7]
        key = evil.node_id                  # evil is the closest holder: every lookup asks it
        for i in (1, 2, 3):
            await nodes[i].publish(key, i)
        honest = (await evil.keeper.store.get(key, now_ms()))[0]
        for forged in forged_variants(honest, key, nodes[9].identity, NodeIdentity.generate()):
            await evil.keeper.store.put(forged)    # bypasses the checks a real node makes
        for reader in (nodes[0], nodes[12], nodes[19]):
            got = await reader.get(key)
            assert {(r.publisher, r.count) for r in got.records} == \
                   {(nodes[i].node_id, i) for i in (1, 2, 3)}
            assert reader.stats["records_dropped_on_read"] >= 3
            assert reader.stats["record_invalid_bad_signature"] >= 2
            assert reader.stats["record_invalid_non_member"] >= 1
    finally:
        await cluster.stop()


async def test_revoked_publisher_records_are_dropped_on_read() -> None:
    cluster = await start_cluster(10)
    try:
        key = os.urandom(32)
        await cluster.servers[2].publish(key, 1)
        await cluster.servers[3].publish(key, 1)
        cluster.membership.remove(cluster.servers[2].identity.verify_key)
        got = await cluster.servers[5].get(key)
        assert [r.publisher for r in got.records] == [cluster.servers[3].node_id]
    finally:
        await cluster.stop()


async def test_non_member_node_is_ignored() -> None:
    cluster = await start_cluster(5)
    outsider_id = NodeIdentity.generate()
    everyone = StaticMembership(set(cluster.membership.keys) | {outsider_id.verify_key})
    outsider = DHTServer(outsider_id, everyone)
    await outsider.start()
    try:
        assert await outsider.ping(cluster.servers[0].address) is None
        assert await outsider.bootstrap([s.address for s in cluster.servers]) == 0
        assert sum(s.stats["dropped_non_member"] for s in cluster.servers) >= 6
        assert all(s.routing.get_contact(outsider.node_id) is None for s in cluster.servers)
    finally:
        await outsider.stop()
        await cluster.stop()


async def test_claimed_id_that_does_not_match_the_key_is_ignored() -> None:
    cluster = await start_cluster(2)
    member = NodeIdentity.generate()
    cluster.membership.add(member.verify_key)
    transport, probe = await open_probe()
    try:
        target = cluster.servers[0]
        claimed = cluster.servers[1].node_id            # impersonate another member's id
        head = struct.pack(">4sB8s32s32s32sQH", b"MFD2", Kind.PING, os.urandom(8), claimed,
                           member.verify_key, target.node_id, now_ms(), 0)
        transport.sendto(head + member.sign(head), target.address)   # validly signed
        assert await probe.answer(0.5) is None
        assert target.stats["dropped_id_mismatch"] == 1
        assert target.routing.get_contact(member.node_id) is None
    finally:
        transport.close()
        await cluster.stop()


async def test_bad_datagrams_are_dropped_counted_and_harmless() -> None:
    cluster: Cluster = await start_cluster(2)
    member = NodeIdentity.generate()
    cluster.membership.add(member.verify_key)
    transport, probe = await open_probe()
    try:
        node = cluster.servers[0]

        def ping(sent: int | None = None, kind: int = Kind.PING, body: bytes = b"",
                 to: bytes | None = None) -> bytes:
            return seal(member, kind, os.urandom(8), sent or now_ms(), body,
                        node.node_id if to is None else to)

        good = ping()
        bad = {
            "garbage": os.urandom(300),
            "truncated": good[:-10],
            "oversized": good + os.urandom(2000),
            "unsigned": good[:-64] + bytes(64),
            "too old": ping(now_ms() - 120_000),
            "from the future": ping(now_ms() + 120_000),
            "unknown kind": ping(kind=99),
            "ping with a body": ping(body=b"surprise"),
            "store with a garbage body": ping(kind=Kind.STORE, body=os.urandom(200)),
            "unsolicited reply": ping(kind=Kind.PONG),
            "addressed to another node": ping(kind=Kind.FIND_NODE, body=os.urandom(32),
                                              to=cluster.servers[1].node_id),
            "a store to anyone": ping(kind=Kind.STORE, body=os.urandom(200), to=bytes(32)),
        }
        transport.sendto(good, node.address)
        # a real PONG, and a challenge: the node asks the new address to prove itself
        assert sorted([(await probe.answer())[4], (await probe.answer())[4]]) == [  # type: ignore[index]
            Kind.PING, Kind.PONG]
        transport.sendto(good, node.address)              # the same bytes again
        for data in bad.values():
            transport.sendto(data, node.address)
        assert await probe.answer(0.5) is None            # nothing answered
        assert {k: node.stats[f"dropped_{k}"] for k in
                ("replayed", "malformed", "oversized", "bad_signature", "stale",
                 "unsolicited", "misaddressed")} == {
            "replayed": 1, "malformed": 5, "oversized": 1, "bad_signature": 1, "stale": 2,
            "unsolicited": 1, "misaddressed": 2}
        assert node.stats["handler_errors"] == 0
        assert await cluster.servers[1].ping(node.address) is not None   # still serving
    finally:
        transport.close()
        await cluster.stop()
