"""The 256-bit id space and the contacts that live in it.

Ids are SHA-256 digests (of a node's signing key, or HMAC outputs for index keys), so
the space is 2**256 wide — upstream kademlia assumes 20-byte SHA-1 ids. ``Contact``
extends kademlia's ``Node`` (kept for its XOR distance, heap and bucket code) with the
verify key that proves the id, so every contact we hold can be checked against the
roster and every id against its key.
"""

from __future__ import annotations

import functools
import ipaddress
import random

from kademlia.node import Node

from node.identity import NODE_ID_BYTES, node_id_for

ID_BYTES = NODE_ID_BYTES
ID_BITS = ID_BYTES * 8
ID_MAX = (1 << ID_BITS) - 1
VERIFY_KEY_BYTES = 32

Address = tuple[str, int]


def id_to_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def int_to_id(value: int) -> bytes:
    return value.to_bytes(ID_BYTES, "big")


def distance(a: bytes, b: bytes) -> int:
    """Kademlia XOR distance between two ids."""
    return id_to_int(a) ^ id_to_int(b)


def random_id_between(low: int, high: int, rng: random.Random) -> bytes:
    """A random id in the inclusive integer range — used to refresh a bucket."""
    return int_to_id(rng.randint(low, high))


def target(node_id: bytes) -> Node:
    """A bare kademlia ``Node`` standing for a lookup target (no address, no key)."""
    if len(node_id) != ID_BYTES:
        raise ValueError(f"DHT ids are {ID_BYTES} bytes, got {len(node_id)}")
    return Node(node_id)


# Every contact in every datagram is parsed and checked, and a federation has few
# addresses: ``ipaddress`` costs ~18 µs a parse (8% of a 300-node simulation's CPU),
# a cached answer well under 1 µs. Both functions are pure; the caches are bounded.
@functools.lru_cache(maxsize=8192)
def packed_ip(host: str) -> bytes:
    """The 4 or 16 bytes of an IP literal; ValueError for anything else (no DNS)."""
    return ipaddress.ip_address(host).packed


@functools.lru_cache(maxsize=8192)
def ip_text(packed: bytes) -> str:
    """The IP literal of 4 or 16 address bytes."""
    return str(ipaddress.ip_address(packed))


def check_address(host: str, port: int) -> None:
    """Contacts carry IP literals only: a DHT datagram must never trigger DNS."""
    try:
        packed_ip(host)
    except ValueError as exc:
        raise ValueError(f"DHT contact host must be an IP address, got {host!r}") from exc
    if not 0 < port < 65536:
        raise ValueError(f"DHT contact port out of range: {port}")


class Contact(Node):
    """A reachable member: verify key (hence id), IP address and UDP port."""

    def __init__(self, verify_key: bytes, host: str, port: int) -> None:
        if len(verify_key) != VERIFY_KEY_BYTES:
            raise ValueError(f"verify key must be {VERIFY_KEY_BYTES} bytes")
        check_address(host, port)
        super().__init__(node_id_for(verify_key), host, port)
        self.verify_key = verify_key

    @property
    def address(self) -> Address:
        return (self.ip, self.port)

    def __repr__(self) -> str:
        return f"Contact({self.id.hex()[:12]}…@{self.ip}:{self.port})"


# Every NODES reply carries k contacts and every datagram's sender becomes one, so a
# large run builds millions of ``Contact`` objects for the same few thousand members
# (300 simulated nodes, one hour: 2.7 million). A contact is never changed after it is
# made (a member that moves is a new contact), so equal ones can be one object. Bounded.
@functools.lru_cache(maxsize=1 << 14)
def contact_of(verify_key: bytes, host: str, port: int) -> Contact:
    """``Contact(verify_key, host, port)``, made once per distinct triple (ValueError
    for a bad key or address, as the constructor)."""
    return Contact(verify_key, host, port)
