"""Repeated association requests answered from memory (``node.pacs.accept_memo``):
the same answer as a fresh negotiation, and who may associate still decided for
every connection."""

from __future__ import annotations

import socket
import struct

import pytest
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from node.pacs.accept_memo import AcceptMemo, Negotiated
from node.testing.nodes import NodeThread, loopback_config
from tests.dicom_tools import dcmtk

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    started = NodeThread(loopback_config(tmp_path_factory.mktemp("memo"))).start()
    yield started
    started.stop()


def _request(calling: str = "FINDSCU") -> bytes:
    from tests.pacs.test_dicom_protocol import _request_pdu
    from pydicom.uid import ExplicitVRLittleEndian
    return _request_pdu([(FIND, ExplicitVRLittleEndian)], calling=calling)


def _answer(node: NodeThread, request: bytes, source: str = "127.0.0.1") -> tuple[int, bytes]:
    sock = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=DEADLINE_S,
                                    source_address=(source, 0))
    try:
        sock.sendall(request)
        head = b""
        while len(head) < 6:
            chunk = sock.recv(6 - len(head))
            assert chunk, "the node closed without an answer"
            head += chunk
        pdu_type, length = struct.unpack(">BxI", head)
        body = b""
        while len(body) < length:
            body += sock.recv(length - len(body))
        return pdu_type, body
    finally:
        sock.close()


def test_a_repeated_request_gets_the_same_answer_from_the_memo(node: NodeThread) -> None:
    memo = node.node.dicom.accept_memo
    request = _request()
    first = _answer(node, request)
    size = len(memo)
    second = _answer(node, request)
    assert first[0] == second[0] == 0x02          # A-ASSOCIATE-AC both times
    assert first[1] == second[1]                  # byte for byte
    assert len(memo) == size                      # no second entry for the same bytes
    assert memo.negotiated(request) is not None    # keyed by the whole PDU
    # a real client, many times over, on the memo's answer
    for _ in range(3):
        assert dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "MEDFED", "127.0.0.1",
                     node.dicom_port).returncode == 0
        found = dcmtk("findscu", "-aet", "FINDSCU", "-aec", "MEDFED", "-S",
                      "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=NOBODY",
                      "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", node.dicom_port)
        assert found.returncode == 0, found.stderr


def test_a_remembered_request_from_an_address_not_allowed_is_still_rejected(
        node: NodeThread) -> None:
    request = _request()
    assert _answer(node, request)[0] == 0x02      # remembered, from 127.0.0.1
    pdu_type, _ = _answer(node, request, source="127.0.0.2")
    assert pdu_type == 0x03                       # A-ASSOCIATE-RJ: FINDSCU@127.0.0.1 only
    assert _answer(node, _request("STRANGER"))[0] == 0x03


def test_the_memo_forgets_the_least_recently_used_request() -> None:
    memo = AcceptMemo(size=2, max_request_bytes=100)
    a, b, c = A_ASSOCIATE(), A_ASSOCIATE(), A_ASSOCIATE()
    memo.remember_request(b"a", a)
    memo.remember_request(b"b", b)
    assert memo.request(b"a") is a                # a is now the most recent
    memo.remember_request(b"c", c)
    assert memo.request(b"b") is None and memo.request(b"a") is a and memo.request(b"c") is c
    memo.remember_negotiated(b"a", Negotiated(b"AC", 16384, ()))
    assert memo.negotiated(b"a") == Negotiated(b"AC", 16384, ())
    memo.remember_negotiated(b"zzz", Negotiated(b"AC", 1, ()))   # not asked: not kept
    assert memo.negotiated(b"zzz") is None
    memo.remember_request(b"x" * 101, a)                       # too large to keep
    assert memo.request(b"x" * 101) is None and len(memo) == 2
