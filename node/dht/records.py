"""Signed index records: one per (key, publisher), pure encode / sign / check.

A record says "publisher P holds about ``count`` items under this key until ``expires``",
optionally with a fixed-size binary payload (a replica holder's node id or a bundle id).
It carries no text field at all, so free text — and with it PHI — cannot be put into the
DHT by accident. The signature covers the key, so a record cannot be replayed under
another key; ``issued_ms`` orders a publisher's records so the newest one wins.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from enum import IntEnum

from node.dht.codec import DecodeError, Reader, TaggedError
from node.dht.ids import ID_BYTES, VERIFY_KEY_BYTES
from node.dht.membership import Membership
from node.identity import NodeIdentity, node_id_for, verify_signature

RECORD_VERSION = 1
SIGNATURE_BYTES = 64
MAX_COUNT = 2**32 - 1
_DOMAIN = b"medfed-dht-record-v1\x00"
_FIXED = struct.Struct(">B32sIQQBB")  # version, publisher key, count, issued, expires, kind, len


class PayloadKind(IntEnum):
    NONE = 0
    NODE_ID = 1      # e.g. where an encrypted replica lives
    BUNDLE_ID = 2    # content address (SHA-256) of a series bundle


PAYLOAD_BYTES = {PayloadKind.NONE: 0, PayloadKind.NODE_ID: 32, PayloadKind.BUNDLE_ID: 32}
MAX_RECORD_BYTES = _FIXED.size + max(PAYLOAD_BYTES.values()) + SIGNATURE_BYTES


class RecordError(TaggedError):
    """A record failed validation (signature, key, membership, time or field bounds)."""


@dataclass(frozen=True)
class Record:
    key: bytes
    publisher_key: bytes
    count: int
    issued_ms: int
    expires_ms: int
    payload_kind: PayloadKind
    payload: bytes
    signature: bytes

    @property
    def publisher(self) -> bytes:
        """Publisher's node id (derived from its key, so it cannot be claimed falsely)."""
        return node_id_for(self.publisher_key)

    def is_expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_ms


def _unsigned(key: bytes, publisher_key: bytes, count: int, issued_ms: int,
              expires_ms: int, kind: PayloadKind, payload: bytes) -> bytes:
    return _FIXED.pack(RECORD_VERSION, publisher_key, count, issued_ms, expires_ms,
                       int(kind), len(payload)) + payload


def _check_fields(key: bytes, count: int, issued_ms: int, expires_ms: int,
                  kind: PayloadKind, payload: bytes) -> None:
    if len(key) != ID_BYTES:
        raise RecordError("bad_key", f"DHT keys are {ID_BYTES} bytes, got {len(key)}")
    if not 0 <= count <= MAX_COUNT:
        raise RecordError("bad_count", f"record count must be within 0..{MAX_COUNT}")
    if not 0 <= issued_ms < expires_ms < 2**63:
        raise RecordError("bad_time", "record must expire after it was issued")
    if len(payload) != PAYLOAD_BYTES[kind]:
        raise RecordError("bad_payload",
                          f"{kind.name} payload must be {PAYLOAD_BYTES[kind]} bytes")


def sign_record(identity: NodeIdentity, key: bytes, count: int, issued_ms: int,
                expires_ms: int, payload_kind: PayloadKind = PayloadKind.NONE,
                payload: bytes = b"") -> Record:
    kind = PayloadKind(payload_kind)
    _check_fields(key, count, issued_ms, expires_ms, kind, payload)
    body = _unsigned(key, identity.verify_key, count, issued_ms, expires_ms, kind, payload)
    signature = identity.sign(_DOMAIN + key + body)
    return Record(key, identity.verify_key, count, issued_ms, expires_ms, kind, payload,
                  signature)


def encode_record(record: Record) -> bytes:
    """Wire/storage form; the key is not repeated (it travels beside the record)."""
    return _unsigned(record.key, record.publisher_key, record.count, record.issued_ms,
                     record.expires_ms, record.payload_kind, record.payload) + record.signature


def read_record(reader: Reader, key: bytes) -> Record:
    version, pub, count, issued, expires, kind_raw, plen = _FIXED.unpack(
        reader.take(_FIXED.size, "record header"))
    if version != RECORD_VERSION:
        raise DecodeError(f"unsupported record version {version}")
    try:
        kind = PayloadKind(kind_raw)
    except ValueError as exc:
        raise DecodeError(f"unknown record payload kind {kind_raw}") from exc
    if plen != PAYLOAD_BYTES[kind]:
        raise DecodeError(f"{kind.name} payload must be {PAYLOAD_BYTES[kind]} bytes")
    payload = reader.take(plen, "record payload")
    signature = reader.take(SIGNATURE_BYTES, "record signature")
    if len(pub) != VERIFY_KEY_BYTES or len(key) != ID_BYTES:
        raise DecodeError("record key sizes are wrong")
    return Record(key, pub, count, issued, expires, kind, payload, signature)


def decode_record(data: bytes, key: bytes) -> Record:
    reader = Reader(data)
    record = read_record(reader, key)
    reader.done("record")
    return record


def check_record(record: Record, key: bytes, now_ms: int, max_ttl_ms: int,
                 max_skew_ms: int, membership: Membership) -> None:
    """Everything a holder or reader must verify before trusting a record."""
    if record.key != key:
        raise RecordError("wrong_key", "record was signed for a different key")
    _check_fields(record.key, record.count, record.issued_ms, record.expires_ms,
                  record.payload_kind, record.payload)
    if record.is_expired(now_ms):
        raise RecordError("expired", "record has expired")
    if record.issued_ms > now_ms + max_skew_ms:
        raise RecordError("future", "record is issued in the future (publisher clock?)")
    if record.expires_ms > now_ms + max_ttl_ms + max_skew_ms:
        raise RecordError("ttl_too_long", "record lives longer than the DHT allows")
    if not membership.is_member(record.publisher_key):
        raise RecordError("non_member", "record publisher is not a federation member")
    body = _unsigned(key, record.publisher_key, record.count, record.issued_ms,
                     record.expires_ms, record.payload_kind, record.payload)
    if not _signed_by(record.publisher_key, _DOMAIN + key + body, record.signature):
        raise RecordError("bad_signature", "record signature does not verify")


# The same record is checked many times over: by each of its k holders when stored, on
# every read of it from our own store, and once per holder that serves it to a reader
# (up to k identical copies per lookup), each an Ed25519 check (~56 µs). Whether a
# signature verifies is a pure function of (key, message, signature): remembered for
# the exact triple, bounded. Everything else ``check_record`` asks (expiry, membership,
# key binding) is asked afresh every time.
@functools.lru_cache(maxsize=1 << 15)
def _signed_by(verify_key: bytes, message: bytes, signature: bytes) -> bool:
    return verify_signature(verify_key, message, signature)
