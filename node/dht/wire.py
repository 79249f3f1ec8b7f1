"""The DHT datagram: a fixed binary envelope, signed by its sender, bounded in size.

Layout (big-endian)::

    magic "MFD2" | kind u8 | msg_id 8 | sender_id 32 | sender_key 32 | recipient_id 32
    | sent_ms u64 | body_len u16 | body | Ed25519 signature 64 (over everything before it)

The signed recipient id stops a datagram captured on its way to one node from being
replayed to another: a node drops every datagram not addressed to it. The only
exception is a PING to ``ANYONE`` (32 zero bytes), sent to an address whose node id is
not known yet (bootstrap); it proves nothing about the sender's address, so a node
never updates a contact from it without a challenge (see ``node.dht.server``).

``MAX_DATAGRAM`` = 1232 bytes (the IPv6 minimum MTU 1280 minus IPv6 and UDP headers),
so no datagram is ever IP-fragmented; upstream kademlia used 8 KB datagrams that
fragment on real links and lose the whole message when one fragment is lost. Parsing
is strict and ordered cheapest first; the stateful checks (freshness, replay) belong
to the protocol. ``WireError.reason`` names the stats counter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from node.dht.codec import DecodeError, TaggedError
from node.dht.ids import ID_BYTES
from node.dht.membership import Membership
from node.identity import NodeIdentity, node_id_for, verify_signature

MAGIC = b"MFD2"
MAX_DATAGRAM = 1232
SIGNATURE_BYTES = 64
MSG_ID_BYTES = 8
_HEADER = struct.Struct(">4sB8s32s32s32sQH")
ANYONE = bytes(ID_BYTES)
PING_KIND = 1  # messages.Kind.PING (messages imports this module)
OVERHEAD = _HEADER.size + SIGNATURE_BYTES
MAX_BODY = MAX_DATAGRAM - OVERHEAD


class WireError(DecodeError, TaggedError):
    """A datagram to drop; ``reason`` is the stats counter suffix."""


@dataclass(frozen=True)
class Datagram:
    kind: int
    msg_id: bytes
    sender_key: bytes
    sent_ms: int
    body: bytes
    recipient_id: bytes = ANYONE

    @property
    def sender_id(self) -> bytes:
        return node_id_for(self.sender_key)


def seal(identity: NodeIdentity, kind: int, msg_id: bytes, sent_ms: int,
         body: bytes, recipient_id: bytes = ANYONE) -> bytes:
    if len(msg_id) != MSG_ID_BYTES:
        raise ValueError(f"msg_id must be {MSG_ID_BYTES} bytes")
    if len(recipient_id) != ID_BYTES:
        raise ValueError(f"recipient_id must be {ID_BYTES} bytes")
    if len(body) > MAX_BODY:
        raise ValueError(f"DHT message body of {len(body)} bytes exceeds {MAX_BODY}")
    head = _HEADER.pack(MAGIC, kind, msg_id, identity.node_id, identity.verify_key,
                        recipient_id, sent_ms, len(body))
    signed = head + body
    return signed + identity.sign(signed)


def open_datagram(data: bytes, membership: Membership, me: bytes | None = None) -> Datagram:
    """Parse and authenticate one datagram from a member, or raise ``WireError``.

    With ``me`` (this node's id), a datagram addressed to another node is refused.

    Membership is checked before the signature so a flood from outsiders costs a hash
    and a set lookup each, not an Ed25519 verification.
    """
    if len(data) > MAX_DATAGRAM:
        raise WireError("oversized", f"datagram of {len(data)} bytes > {MAX_DATAGRAM}")
    if len(data) < OVERHEAD:
        raise WireError("malformed", "datagram shorter than the fixed header")
    (magic, kind, msg_id, sender_id, sender_key, recipient_id, sent_ms,
     body_len) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("malformed", "not a medfed DHT datagram (bad magic)")
    if len(data) != OVERHEAD + body_len:
        raise WireError("malformed", "datagram length does not match its body length")
    if len(sender_id) != ID_BYTES or node_id_for(sender_key) != sender_id:
        raise WireError("id_mismatch", "claimed node id is not the hash of the sender key")
    if not membership.is_member(sender_key):
        raise WireError("non_member", "sender is not a federation member")
    if me is not None and recipient_id != me and not (recipient_id == ANYONE
                                                      and kind == PING_KIND):
        raise WireError("misaddressed", "datagram is addressed to another node")
    signed, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
    if not verify_signature(sender_key, signed, signature):
        raise WireError("bad_signature", "datagram signature does not verify")
    return Datagram(kind, msg_id, sender_key, sent_ms, bytes(data[_HEADER.size:-SIGNATURE_BYTES]),
                    recipient_id)
