"""How a DIMSE message is cut into P-DATA-TF PDUs (node/pacs/wire.py), checked on the bytes.

A message whose command and data set fit the peer's PDU size goes out as ONE PDU with
two PDVs (a reader that handles one PDU per loop turn, as pynetdicom's DUL does, gets
it in one turn); a larger one as one PDV per PDU; never two messages in one PDU.
The end-to-end behaviour with dcmtk and pynetdicom clients is in test_cfind_dcmtk.py
and test_find.py.
"""

from __future__ import annotations

import socket
import struct

from node.pacs.wire import PduSocket


def _pdus(raw: bytes) -> list[list[tuple[int, int, bytes]]]:
    """[[(context id, control byte, value), ...] per PDU]."""
    out, pos = [], 0
    while pos < len(raw):
        kind, length = struct.unpack_from(">BxI", raw, pos)
        assert kind == 0x04
        items, p, end = [], pos + 6, pos + 6 + length
        while p < end:
            item_len, cx, control = struct.unpack_from(">IBB", raw, p)
            items.append((cx, control, raw[p + 6:p + 4 + item_len]))
            p += 4 + item_len
        assert p == end
        out.append(items)
        pos = end
    return out


def _io(max_send: int) -> PduSocket:
    a, b = socket.socketpair()
    b.close()
    io = PduSocket(a)
    io.max_send = max_send
    return io


def test_a_small_message_is_one_pdu_with_its_command_and_data_set_pdvs() -> None:
    io = _io(16384)
    command, dataset = b"C" * 88, b"D" * 98
    pdus = _pdus(io.message(3, command, dataset))
    assert pdus == [[(3, 0x03, command), (3, 0x02, dataset)]]
    io.close()


def test_a_message_without_data_set_is_one_pdu_with_one_pdv() -> None:
    io = _io(16384)
    assert _pdus(io.message(1, b"C" * 76)) == [[(1, 0x03, b"C" * 76)]]
    io.close()


def test_a_message_at_the_limit_still_fits_and_one_byte_more_is_split() -> None:
    io = _io(200)
    command = b"C" * 88
    fits = b"D" * (200 - 88 - 12)
    assert len(_pdus(io.message(1, command, fits))) == 1
    split = _pdus(io.message(1, command, fits + b"DD"))
    assert [len(p) for p in split] == [1, 1]            # one PDV per PDU
    assert split[0][0] == (1, 0x03, command)
    assert split[1][0] == (1, 0x02, fits + b"DD")
    io.close()


def test_a_large_data_set_is_fragmented_within_the_peer_limit() -> None:
    io = _io(1000)
    dataset = bytes(range(256)) * 10
    pdus = _pdus(io.message(5, b"C" * 88, dataset))
    assert all(len(p) == 1 for p in pdus)
    assert b"".join(v for p in pdus[1:] for _cx, _c, v in p) == dataset
    assert [c for p in pdus[1:] for _cx, c, _v in p][-1] == 0x02
    assert all(c == 0x00 for p in pdus[1:-1] for _cx, c, _v in p)
    assert all(len(v) + 6 <= 1000 for p in pdus for _cx, _c, v in p)
    io.close()
