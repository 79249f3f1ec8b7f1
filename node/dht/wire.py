"""The DHT datagram: a fixed binary envelope, authenticated by its sender, bounded in size.

Layout (big-endian)::

    magic | kind u8 | msg_id 8 | sender_id 32 | sender_key 32 | recipient_id 32
    | sent_ms u64 | body_len u16 | body | tag (over everything before it)

Two tags, told apart by the magic: "MFD3", a datagram addressed to a known node,
carries a 32-byte MAC under the key only sender and recipient share
(``node.dht.pairkeys``: one X25519 agreement per peer, ~1.5 µs a datagram instead of an
Ed25519 signature's ~21 µs to make and ~56 µs to check); "MFD2" carries the sender's
Ed25519 signature (64 bytes), which anyone can check: the PING to ``ANYONE`` below, and
accepted for any datagram. ``read_header`` parses a datagram without authenticating it
(for observers of the wire, such as tests' taps).

The authenticated recipient id stops a datagram captured on its way to one node from being
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

import hmac
import struct
from dataclasses import dataclass

from node.dht.codec import DecodeError, TaggedError
from node.dht.ids import ID_BYTES
from node.dht.membership import Membership
from node.dht.pairkeys import MAC_BYTES, PairKeyError, PairKeys, mac
from node.identity import NodeIdentity, node_id_for, verify_signature

MAGIC = b"MFD2"        # Ed25519-signed
MAC_MAGIC = b"MFD3"    # MAC under the sender's and recipient's pairwise key
MAX_DATAGRAM = 1232
SIGNATURE_BYTES = 64
MSG_ID_BYTES = 8
_HEADER = struct.Struct(">4sB8s32s32s32sQH")
ANYONE = bytes(ID_BYTES)
PING_KIND = 1  # messages.Kind.PING (messages imports this module)
OVERHEAD = _HEADER.size + SIGNATURE_BYTES   # the larger tag: bodies fit either form
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
         body: bytes, recipient_id: bytes = ANYONE, mac_key: bytes | None = None) -> bytes:
    """Signed by ``identity``; with ``mac_key`` (its pairwise key with the recipient,
    ``PairKeys.key_for``) tagged with a MAC instead, which needs a recipient."""
    if len(msg_id) != MSG_ID_BYTES:
        raise ValueError(f"msg_id must be {MSG_ID_BYTES} bytes")
    if len(recipient_id) != ID_BYTES:
        raise ValueError(f"recipient_id must be {ID_BYTES} bytes")
    if len(body) > MAX_BODY:
        raise ValueError(f"DHT message body of {len(body)} bytes exceeds {MAX_BODY}")
    if mac_key is not None and recipient_id == ANYONE:
        raise ValueError("a MAC-tagged datagram needs its recipient's id")
    head = _HEADER.pack(MAGIC if mac_key is None else MAC_MAGIC, kind, msg_id,
                        identity.node_id, identity.verify_key, recipient_id, sent_ms, len(body))
    signed = head + body
    return signed + (identity.sign(signed) if mac_key is None else mac(mac_key, signed))


def read_header(data: bytes) -> Datagram:
    """The datagram's fields, NOT authenticated (observers of the wire; never a node's
    input path): raises ``WireError`` only for what cannot be parsed."""
    if len(data) < _HEADER.size or data[:4] not in (MAGIC, MAC_MAGIC):
        raise WireError("malformed", "not a medfed DHT datagram")
    (_magic, kind, msg_id, _sender_id, sender_key, recipient_id, sent_ms,
     body_len) = _HEADER.unpack_from(data)
    return Datagram(kind, msg_id, sender_key, sent_ms,
                    bytes(data[_HEADER.size:_HEADER.size + body_len]), recipient_id)


def open_datagram(data: bytes, membership: Membership, me: bytes | None = None,
                  keys: PairKeys | None = None) -> Datagram:
    """Parse and authenticate one datagram from a member, or raise ``WireError``.

    With ``me`` (this node's id), a datagram addressed to another node is refused. A
    MAC-tagged datagram is authenticated with ``keys`` (this node's pairwise keys, whose
    id must be the recipient); without them it cannot be, and is refused.

    Membership is checked before the tag so a flood from outsiders costs a hash
    and a set lookup each, not an Ed25519 verification or a key agreement.
    """
    if len(data) > MAX_DATAGRAM:
        raise WireError("oversized", f"datagram of {len(data)} bytes > {MAX_DATAGRAM}")
    if len(data) < OVERHEAD - SIGNATURE_BYTES + MAC_BYTES:
        raise WireError("malformed", "datagram shorter than the fixed header")
    (magic, kind, msg_id, sender_id, sender_key, recipient_id, sent_ms,
     body_len) = _HEADER.unpack_from(data)
    if magic == MAGIC:
        tag_bytes = SIGNATURE_BYTES
    elif magic == MAC_MAGIC:
        tag_bytes = MAC_BYTES
    else:
        raise WireError("malformed", "not a medfed DHT datagram (bad magic)")
    if len(data) != _HEADER.size + body_len + tag_bytes:
        raise WireError("malformed", "datagram length does not match its body length")
    if len(sender_id) != ID_BYTES or node_id_for(sender_key) != sender_id:
        raise WireError("id_mismatch", "claimed node id is not the hash of the sender key")
    if not membership.is_member(sender_key):
        raise WireError("non_member", "sender is not a federation member")
    if me is not None and recipient_id != me and not (recipient_id == ANYONE
                                                      and kind == PING_KIND):
        raise WireError("misaddressed", "datagram is addressed to another node")
    signed, tag = data[:-tag_bytes], data[-tag_bytes:]
    if tag_bytes == SIGNATURE_BYTES:
        if not verify_signature(sender_key, signed, tag):
            raise WireError("bad_signature", "datagram signature does not verify")
    elif keys is None or recipient_id != keys.own_id or not _mac_ok(keys, sender_key,
                                                                    signed, tag):
        raise WireError("bad_mac", "datagram MAC does not verify for this node")
    return Datagram(kind, msg_id, sender_key, sent_ms, bytes(data[_HEADER.size:-tag_bytes]),
                    recipient_id)


def _mac_ok(keys: PairKeys, sender_key: bytes, signed: bytes, tag: bytes) -> bool:
    try:
        key = keys.key_for(sender_key)
    except PairKeyError:
        return False
    return hmac.compare_digest(mac(key, signed), tag)
