"""Datagrams to a known node carry a MAC under the pair's key (node.dht.pairkeys): only
the recipient can check it, a third member cannot forge one, tampering, re-addressing
and replays are refused; live nodes sign only their bootstrap PINGs to anyone."""

from __future__ import annotations

import os
import time

import pytest

from node.dht.cluster import start_cluster
from node.dht.membership import StaticMembership
from node.dht.messages import Kind
from node.dht.pairkeys import MAC_BYTES, PairKeys
from node.dht.wire import ANYONE, MAC_MAGIC, MAGIC, WireError, open_datagram, read_header, seal
from node.identity import NodeIdentity
from tests.dht.test_dht_hostile import open_probe

A, B, C = (NodeIdentity.generate() for _ in range(3))
MEMBERS = StaticMembership({A.verify_key, B.verify_key, C.verify_key})
KEYS = {who.node_id: PairKeys(who) for who in (A, B, C)}


def now_ms() -> int:
    return int(time.time() * 1000)


def tagged(sender: NodeIdentity, recipient: NodeIdentity, body: bytes = b"",
           kind: int = Kind.FIND_NODE, key: bytes | None = None) -> bytes:
    key = key or KEYS[sender.node_id].key_for(recipient.verify_key)
    return seal(sender, kind, os.urandom(8), now_ms(), body, recipient.node_id, key)


def reason(data: bytes, me: NodeIdentity, keys: PairKeys | None = None) -> str:
    with pytest.raises(WireError) as err:
        open_datagram(data, MEMBERS, me.node_id, keys or KEYS[me.node_id])
    return err.value.reason


def test_pair_keys_agree_between_the_two_ends_only() -> None:
    ab = KEYS[A.node_id].key_for(B.verify_key)
    assert ab == KEYS[B.node_id].key_for(A.verify_key) == PairKeys(A).key_for(B.verify_key)
    assert len(ab) == MAC_BYTES
    assert ab not in {KEYS[A.node_id].key_for(C.verify_key),
                      KEYS[C.node_id].key_for(B.verify_key)}


def test_a_tagged_datagram_opens_for_its_recipient_and_nobody_else() -> None:
    body = os.urandom(32)
    data = tagged(A, B, body)
    assert data[:4] == MAC_MAGIC and len(data) < len(seal(A, Kind.FIND_NODE, os.urandom(8),
                                                          now_ms(), body, B.node_id))
    got = open_datagram(data, MEMBERS, B.node_id, KEYS[B.node_id])
    assert (got.kind, got.body, got.sender_id, got.recipient_id) == (
        Kind.FIND_NODE, body, A.node_id, B.node_id)
    assert reason(data, C) == "misaddressed"                     # re-sent to another node
    with pytest.raises(WireError) as err:                       # a wire observer cannot check it
        open_datagram(data, MEMBERS)
    assert err.value.reason == "bad_mac"
    assert read_header(data).recipient_id == B.node_id          # but can read its header


def test_forged_tampered_and_misused_tags_are_refused() -> None:
    data = tagged(A, B, os.urandom(40))
    for at in (0 + 4, 110, 125):                  # kind, timestamp, body
        flipped = bytearray(data)
        flipped[at] ^= 1
        assert reason(bytes(flipped), B) == "bad_mac"
    assert reason(data[:-MAC_BYTES] + bytes(MAC_BYTES), B) == "bad_mac"
    assert reason(data[:-1], B) == "malformed"
    # C, a member, claims to be A: it has no key with B but its own, and A's is not C's
    forged = bytearray(tagged(A, B, key=KEYS[C.node_id].key_for(B.verify_key)))
    assert reason(bytes(forged), B) == "bad_mac"
    # B's own datagram to A, reflected back to B, is not addressed to B
    assert reason(tagged(B, A), B) == "misaddressed"
    # a recipient whose keys are not its own cannot open it either
    assert reason(data, B, keys=KEYS[C.node_id]) == "bad_mac"
    # a MAC needs a recipient: none to ANYONE, and a tagged PING to ANYONE is refused
    with pytest.raises(ValueError):
        seal(A, Kind.PING, os.urandom(8), now_ms(), b"", ANYONE,
             KEYS[A.node_id].key_for(B.verify_key))
    to_anyone = bytearray(tagged(A, B, kind=Kind.PING))
    to_anyone[77:109] = ANYONE
    assert reason(bytes(to_anyone), B) == "bad_mac"
    # a signed datagram still opens (the bootstrap PING's form)
    signed = seal(A, Kind.FIND_NODE, os.urandom(8), now_ms(), b"x" * 32, B.node_id)
    assert signed[:4] == MAGIC
    assert open_datagram(signed, MEMBERS, B.node_id, KEYS[B.node_id]).sender_id == A.node_id


async def test_live_nodes_tag_what_is_addressed_and_refuse_replayed_tags() -> None:
    cluster = await start_cluster(3)
    prober = NodeIdentity.generate()
    cluster.membership.add(prober.verify_key)
    sent: list[bytes] = []
    for server in cluster.servers:
        transport = server._require().transport
        assert transport is not None
        original = transport.sendto

        def spy(data: bytes, addr: object = None, original=original) -> None:
            sent.append(bytes(data))
            original(data, addr)
        transport.sendto = spy  # type: ignore[method-assign]
    udp, probe = await open_probe()
    try:
        a, b, _c = cluster.servers
        await a.find_node(os.urandom(32))
        await a.ping(b.address)                       # to an address: signed, to ANYONE
        headers = [read_header(d) for d in sent]
        assert {d[:4] for d, h in zip(sent, headers) if h.recipient_id != ANYONE} == {MAC_MAGIC}
        assert {d[:4] for d, h in zip(sent, headers) if h.recipient_id == ANYONE} == {MAGIC}
        assert any(h.recipient_id == ANYONE for h in headers)

        keys = PairKeys(prober)
        ping = seal(prober, Kind.PING, os.urandom(8), now_ms(), b"", a.node_id,
                    keys.key_for(a.identity.verify_key))
        udp.sendto(ping, a.address)
        pong = await probe.reply(Kind.PONG)
        assert pong is not None and pong[:4] == MAC_MAGIC
        assert open_datagram(pong, cluster.membership, prober.node_id, keys).sender_id == a.node_id
        udp.sendto(ping, a.address)                   # the same tagged bytes again
        forged = seal(prober, Kind.PING, os.urandom(8), now_ms(), b"", a.node_id,
                      keys.key_for(b.identity.verify_key))   # under another pair's key
        udp.sendto(forged, a.address)
        assert await probe.reply(Kind.PONG, 0.5) is None
        assert a.stats["dropped_replayed"] == 1 and a.stats["dropped_bad_mac"] == 1
    finally:
        udp.close()
        await cluster.stop()
