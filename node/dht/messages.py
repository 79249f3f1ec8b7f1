"""RPC message bodies (inside an authenticated datagram), fixed binary, strictly parsed.

Contacts are sent as (verify key, IP, port): the id is derived from the key, so a peer
cannot advertise a contact under an id that its key does not hash to. A FIND_VALUE
answer carries as many records as fit in one datagram and says whether more remain;
the reader pages on with a cursor (the last publisher id seen) — so a key with many
publishers never needs a datagram above the size bound.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum

from node.dht.codec import DecodeError, Reader, u8, u16
from node.dht.ids import ID_BYTES, VERIFY_KEY_BYTES, Contact, contact_of, ip_text, packed_ip
from node.dht.records import Record, encode_record, read_record
from node.dht.wire import MAX_BODY


class Kind(IntEnum):
    PING = 1
    PONG = 2
    STORE = 3
    STORE_ACK = 4
    FIND_NODE = 5
    NODES = 6
    FIND_VALUE = 7
    VALUES = 8


REPLY_KIND = {Kind.PING: Kind.PONG, Kind.STORE: Kind.STORE_ACK,
              Kind.FIND_NODE: Kind.NODES, Kind.FIND_VALUE: Kind.VALUES}


class StoreStatus(IntEnum):
    STORED = 0
    STALE = 1
    REJECTED = 2
    FULL = 3


@dataclass(frozen=True)
class StoreRequest:
    record: Record

    def encode(self) -> bytes:
        return self.record.key + encode_record(self.record)

    @classmethod
    def decode(cls, body: bytes) -> StoreRequest:
        reader = Reader(body)
        key = reader.take(ID_BYTES, "key")
        record = read_record(reader, key)
        reader.done("STORE")
        return cls(record)


@dataclass(frozen=True)
class FindNodeRequest:
    target: bytes

    def encode(self) -> bytes:
        return self.target

    @classmethod
    def decode(cls, body: bytes) -> FindNodeRequest:
        reader = Reader(body)
        target = reader.take(ID_BYTES, "target")
        reader.done("FIND_NODE")
        return cls(target)


@dataclass(frozen=True)
class FindValueRequest:
    key: bytes
    after: bytes | None = None      # cursor: continue after this publisher id
    want_contacts: bool = True      # False on follow-up pages

    def encode(self) -> bytes:
        flags = (1 if self.after is not None else 0) | (2 if self.want_contacts else 0)
        return self.key + u8(flags) + (self.after or b"")

    @classmethod
    def decode(cls, body: bytes) -> FindValueRequest:
        reader = Reader(body)
        key = reader.take(ID_BYTES, "key")
        flags = reader.u8("flags")
        if flags & ~3:
            raise DecodeError("unknown FIND_VALUE flags")
        after = reader.take(ID_BYTES, "cursor") if flags & 1 else None
        reader.done("FIND_VALUE")
        return cls(key, after, bool(flags & 2))


def encode_contact(contact: Contact) -> bytes:
    return _contact_bytes(contact.verify_key, contact.ip, contact.port)


# Every NODES reply carries k contacts, encoded by its sender and parsed by its reader:
# at 1,000 simulated nodes a million replies in the world's build alone, from the same
# few thousand contacts. Both directions are pure functions of the contact's bytes;
# the caches are bounded (a parse that fails raises and is not remembered).
@functools.lru_cache(maxsize=1 << 14)
def _contact_bytes(verify_key: bytes, host: str, port: int) -> bytes:
    packed = packed_ip(host)
    return verify_key + u8(len(packed)) + packed + u16(port)


@functools.lru_cache(maxsize=1 << 14)
def _contact_from(raw: bytes) -> Contact:
    key, size = raw[:VERIFY_KEY_BYTES], raw[VERIFY_KEY_BYTES]
    host = ip_text(raw[VERIFY_KEY_BYTES + 1:VERIFY_KEY_BYTES + 1 + size])
    port = int.from_bytes(raw[-2:], "big")
    try:
        return contact_of(key, host, port)
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc


def read_contact(reader: Reader) -> Contact:
    head = reader.take(VERIFY_KEY_BYTES + 1, "contact key")
    size = head[-1]
    if size not in (4, 16):
        raise DecodeError("contact address must be IPv4 or IPv6")
    return _contact_from(head + reader.take(size + 2, "address"))


def _encode_contacts(contacts: list[Contact]) -> bytes:
    return u8(len(contacts)) + b"".join(encode_contact(c) for c in contacts)


def _read_contacts(reader: Reader) -> list[Contact]:
    return [read_contact(reader) for _ in range(reader.u8("contact count"))]


@dataclass(frozen=True)
class NodesResponse:
    contacts: list[Contact]

    def encode(self) -> bytes:
        return _encode_contacts(self.contacts)

    @classmethod
    def decode(cls, body: bytes) -> NodesResponse:
        reader = Reader(body)
        contacts = _read_contacts(reader)
        reader.done("NODES")
        return cls(contacts)


@dataclass(frozen=True)
class ValuesResponse:
    key: bytes
    records: list[Record]
    more: bool
    contacts: list[Contact]

    def encode(self) -> bytes:
        blobs = b"".join(encode_record(r) for r in self.records)
        return (self.key + u8(1 if self.more else 0) + _encode_contacts(self.contacts)
                + u8(len(self.records)) + blobs)

    @classmethod
    def decode(cls, body: bytes) -> ValuesResponse:
        reader = Reader(body)
        key = reader.take(ID_BYTES, "key")
        more = reader.u8("more flag")
        if more > 1:
            raise DecodeError("bad VALUES more flag")
        contacts = _read_contacts(reader)
        records = [read_record(reader, key) for _ in range(reader.u8("record count"))]
        reader.done("VALUES")
        return cls(key, records, bool(more), contacts)

    @classmethod
    def fit(cls, key: bytes, records: list[Record], contacts: list[Contact],
            budget: int = MAX_BODY) -> ValuesResponse:
        """Contacts first (the farthest dropped if k IPv6 contacts alone overflow), then
        as many records as fit in ``budget`` bytes."""
        used = len(cls(key, [], False, contacts).encode())
        while used > budget and contacts:
            contacts = contacts[:-1]
            used = len(cls(key, [], False, contacts).encode())
        taken: list[Record] = []
        for record in records:
            size = len(encode_record(record))
            if used + size > budget or len(taken) == 255:
                break
            taken.append(record)
            used += size
        return cls(key, taken, len(taken) < len(records), contacts)


def decode_empty(body: bytes) -> None:
    if body:
        raise DecodeError("PING/PONG carry no body")


def encode_store_ack(status: StoreStatus) -> bytes:
    return u8(int(status))


def decode_store_ack(body: bytes) -> StoreStatus:
    reader = Reader(body)
    raw = reader.u8("status")
    reader.done("STORE_ACK")
    try:
        return StoreStatus(raw)
    except ValueError as exc:
        raise DecodeError(f"unknown store status {raw}") from exc
