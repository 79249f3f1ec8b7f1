"""Pure codecs: signed records, the datagram envelope and RPC bodies — round trips,
tampering, bounds, and fuzzed bytes that must only ever raise DecodeError."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.dht.codec import DecodeError
from node.dht.ids import Contact
from node.dht.membership import StaticMembership
from node.dht.messages import (FindValueRequest, Kind, NodesResponse, StoreRequest,
                               ValuesResponse)
from node.dht.records import (MAX_RECORD_BYTES, PayloadKind, RecordError, check_record,
                              decode_record, encode_record, sign_record)
from node.dht.wire import MAX_BODY, MAX_DATAGRAM, WireError, open_datagram, seal
from node.identity import NodeIdentity

ME = NodeIdentity.generate()
MEMBERS = StaticMembership({ME.verify_key})
KEY = os.urandom(32)
HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def record(**kw):
    t = now_ms()
    args = dict(identity=ME, key=KEY, count=7, issued_ms=t, expires_ms=t + HOUR_MS)
    args.update(kw)
    return sign_record(**args)


def check(rec, key=KEY, members=MEMBERS, at=None):
    check_record(rec, key, at or now_ms(), 2 * HOUR_MS, 30_000, members)


def test_record_roundtrip_and_verify() -> None:
    rec = record(payload_kind=PayloadKind.BUNDLE_ID, payload=os.urandom(32))
    blob = encode_record(rec)
    assert len(blob) <= MAX_RECORD_BYTES
    again = decode_record(blob, KEY)
    assert again == rec and again.publisher == ME.node_id
    check(again)


@pytest.mark.parametrize("change,reason", [
    (dict(count=8), "bad_signature"),
    (dict(expires_ms=1), "bad_time"),
    (dict(issued_ms=0), "bad_signature"),
    (dict(payload=b"\x01" * 32, payload_kind=PayloadKind.NODE_ID), "bad_signature"),
])
def test_tampered_record_is_rejected(change, reason) -> None:
    rec = record()
    forged = type(rec)(**{**rec.__dict__, **change})
    with pytest.raises(RecordError) as err:
        check(forged)
    assert err.value.reason == reason


def test_record_checks_key_membership_expiry_and_ttl() -> None:
    rec = record()
    reasons = []
    for args in (dict(key=os.urandom(32)), dict(members=StaticMembership()),
                 dict(at=rec.expires_ms)):
        with pytest.raises(RecordError) as err:
            check(rec, **args)
        reasons.append(err.value.reason)
    t = now_ms()
    for rec2 in (record(expires_ms=t + 10 * HOUR_MS),
                 record(issued_ms=t + HOUR_MS, expires_ms=t + HOUR_MS + 1)):
        with pytest.raises(RecordError) as err:
            check(rec2)
        reasons.append(err.value.reason)
    assert reasons == ["wrong_key", "non_member", "expired", "ttl_too_long", "future"]


@pytest.mark.parametrize("kw", [
    dict(count=-1), dict(count=2**32), dict(key=b"short"),
    dict(payload_kind=PayloadKind.NONE, payload=b"x"),
    dict(payload_kind=PayloadKind.BUNDLE_ID, payload=b"x" * 31),
])
def test_bad_record_fields_raise_clear_errors(kw) -> None:
    with pytest.raises(RecordError):
        record(**kw)


def test_datagram_envelope_roundtrip_and_rejections() -> None:
    body = os.urandom(100)
    data = seal(ME, Kind.PING, os.urandom(8), now_ms(), body)
    dgram = open_datagram(data, MEMBERS)
    assert (dgram.kind, dgram.body, dgram.sender_id) == (Kind.PING, body, ME.node_id)

    def reason(raw: bytes, members=MEMBERS) -> str:
        with pytest.raises(WireError) as err:
            open_datagram(raw, members)
        return err.value.reason

    flipped = bytearray(data)
    flipped[100] ^= 1
    wrong_id = data[:13] + os.urandom(32) + data[45:]
    assert reason(bytes(flipped)) == "bad_signature"
    assert reason(data[:-64] + bytes(64)) == "bad_signature"      # unsigned
    assert reason(wrong_id) == "id_mismatch"
    assert reason(data, StaticMembership()) == "non_member"
    assert reason(data[:50]) == "malformed"
    assert reason(data + b"x") == "malformed"
    assert reason(b"XXXX" + data[4:]) == "malformed"
    assert reason(data + bytes(MAX_DATAGRAM)) == "oversized"
    with pytest.raises(ValueError):
        seal(ME, Kind.PING, os.urandom(8), now_ms(), bytes(MAX_BODY + 1))


def test_values_response_pages_within_the_datagram_bound() -> None:
    pubs = [NodeIdentity.generate() for _ in range(30)]
    t = now_ms()
    records = sorted((sign_record(p, KEY, 1, t, t + HOUR_MS, PayloadKind.NODE_ID,
                                  os.urandom(32)) for p in pubs), key=lambda r: r.publisher)
    near = [Contact(NodeIdentity.generate().verify_key, "::1", 4000 + i) for i in range(20)]
    first = ValuesResponse.fit(KEY, records, near)
    assert first.more and len(first.encode()) <= MAX_BODY
    rest = ValuesResponse.fit(KEY, records, [])
    assert 0 < len(rest.records) < 30 and len(rest.encode()) <= MAX_BODY
    back = ValuesResponse.decode(rest.encode())
    assert back.records == rest.records and back.more
    nodes = NodesResponse.decode(NodesResponse(near).encode())
    assert [(c.id, c.ip, c.port) for c in nodes.contacts] == [(c.id, c.ip, c.port) for c in near]


def test_request_bodies_roundtrip() -> None:
    rec = record()
    assert StoreRequest.decode(StoreRequest(rec).encode()).record == rec
    ask = FindValueRequest(KEY, os.urandom(32), False)
    assert FindValueRequest.decode(ask.encode()) == ask


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400))
def test_fuzzed_bytes_only_raise_decode_errors(blob: bytes) -> None:
    for parse in (lambda: open_datagram(blob, MEMBERS), lambda: decode_record(blob, KEY),
                  lambda: StoreRequest.decode(blob), lambda: ValuesResponse.decode(blob),
                  lambda: NodesResponse.decode(blob), lambda: FindValueRequest.decode(blob)):
        with contextlib.suppress(DecodeError):
            parse()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_RECORD_BYTES - 1), st.integers(0, 255))
def test_mutated_records_never_verify(pos: int, xor: int) -> None:
    blob = bytearray(encode_record(record()))
    blob[pos % len(blob)] ^= (xor or 1)
    try:
        rec = decode_record(bytes(blob), KEY)
    except DecodeError:
        return
    with pytest.raises(RecordError):
        check(rec)


def test_decoded_contacts_are_shared_and_bad_ones_still_refused() -> None:
    """Equal contacts from different replies are one object (node.dht.ids.contact_of);
    a contact with a bad address is refused every time (failures are not cached)."""
    peers = [Contact(NodeIdentity.generate().verify_key, "10.1.2.3", 4000 + i)
             for i in range(3)]
    body = NodesResponse(peers).encode()
    first, again = NodesResponse.decode(body).contacts, NodesResponse.decode(body).contacts
    assert [c.id for c in first] == [p.id for p in peers]
    assert all(a is b for a, b in zip(first, again))
    assert first[0].address == ("10.1.2.3", 4000) and first[0].verify_key == peers[0].verify_key
    bad = bytearray(body)
    port_at = 1 + 32 + 1 + 4        # count, key, address length, IPv4 address
    bad[port_at:port_at + 2] = b"\x00\x00"    # port 0
    for _ in range(2):
        with pytest.raises(DecodeError, match="port"):
            NodesResponse.decode(bytes(bad))
