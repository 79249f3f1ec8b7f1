"""The association layer under stress: malformed and oversized PDUs (fuzzed), aborts at
every stage, the ARTIM / network timeouts, C-CANCEL, several senders at once."""

from __future__ import annotations

import socket
from dataclasses import replace
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from node.pacs import dimse
from node.pacs.association import user_information
from node.synth.generate import generate, iter_datasets
from node.testing.nodes import NodeThread, loopback_config
from tests.dicom_tools import dcmtk, encode, scu

DEADLINE_S = 30.0


def _echo_ok(node: NodeThread) -> bool:
    proc = dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "MEDFED", "127.0.0.1", node.dicom_port)
    return proc.returncode == 0


def _request_pdu(contexts: list[tuple[str, str]], calling: str = "PYNETDICOM",
                 max_pdu: int = 16384) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "MEDFED"
    cxs = []
    for n, (sop, ts) in enumerate(contexts):
        cx = build_context(sop, [ts])
        cx.context_id = 2 * n + 1
        cxs.append(cx)
    primitive.presentation_context_definition_list = cxs
    primitive.user_information = user_information(max_pdu)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _connect(node: NodeThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=DEADLINE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return 0, b""
        head += chunk
    pdu_type, length = struct.unpack(">BxI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return pdu_type, body


def _associate(node: NodeThread, contexts: list[tuple[str, str]], max_pdu: int = 16384
               ) -> socket.socket:
    sock = _connect(node)
    sock.sendall(_request_pdu(contexts, max_pdu=max_pdu))
    pdu_type, _body = _read_pdu(sock)
    assert pdu_type == 0x02, "association not accepted"
    return sock


def _pdata(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">BxIIBB", 4, len(value) + 6, len(value) + 2, context_id, control) + value


def _closed_by_peer(sock: socket.socket) -> int:
    """Read until the node closes; returns the type of the last PDU it sent (0 = none).
    Raises socket.timeout if the node keeps the connection open past the deadline."""
    last = 0
    while True:
        try:
            pdu_type, _ = _read_pdu(sock)
        except ConnectionError:
            return last
        if pdu_type == 0:
            return last
        last = pdu_type


@pytest.fixture(scope="module")
def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    cfg = loopback_config(tmp_path_factory.mktemp("proto"))
    cfg = replace(cfg, dicom=replace(cfg.dicom, max_pdu=65536, acse_timeout_s=2.0,
                                     network_timeout_s=3.0))
    started = NodeThread(cfg).start()
    yield started
    started.stop()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.binary(min_size=0, max_size=300), flips=st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    established=st.booleans())
def test_fuzzed_pdus_never_crash_the_node(node, first: bytes, flips, established: bool) -> None:  # type: ignore[no-untyped-def]
    """Random bytes as the first PDU, or a valid request / P-DATA with random bytes
    changed: the node answers or aborts, and keeps serving others."""
    sock = _connect(node)
    try:
        if established:
            rq = _request_pdu([(CTImageStorage, ExplicitVRLittleEndian)])
            sock.sendall(rq)
            _read_pdu(sock)
            cmd = dimse.encode(AffectedSOPClassUID=CTImageStorage, CommandField=1, MessageID=1,
                               Priority=0, CommandDataSetType=0, AffectedSOPInstanceUID="1.2.3")
            payload = bytearray(_pdata(1, 3, cmd) + _pdata(1, 2, first))
        else:
            payload = bytearray(_request_pdu([(CTImageStorage, ExplicitVRLittleEndian)]) + first)
        for pos, value in flips:
            if payload:
                payload[pos % len(payload)] = value
        sock.settimeout(DEADLINE_S)
        try:
            sock.sendall(bytes(payload))
            sock.shutdown(socket.SHUT_WR)
            _closed_by_peer(sock)
        except OSError:
            pass
    finally:
        sock.close()
    assert _echo_ok(node)


def test_wrong_first_pdu_is_aborted(node) -> None:  # type: ignore[no-untyped-def]
    sock = _connect(node)
    sock.sendall(_pdata(1, 3, b"\x00" * 8))
    assert _closed_by_peer(sock) == 0x07  # A-ABORT
    sock.close()


def test_pdu_larger_than_announced_is_aborted(node) -> None:  # type: ignore[no-untyped-def]
    sock = _associate(node, [(CTImageStorage, ExplicitVRLittleEndian)])
    too_big = 65536 + 100
    sock.sendall(struct.pack(">BxI", 4, too_big) + b"\x00" * 64)
    assert _closed_by_peer(sock) == 0x07
    sock.close()
    assert _echo_ok(node)


def test_silent_connection_hits_artim_and_is_closed(node) -> None:  # type: ignore[no-untyped-def]
    sock = _connect(node)
    assert _closed_by_peer(sock) in (0, 0x07)  # closed after acse_timeout_s, not hanging
    sock.close()
    assert _echo_ok(node)


def test_idle_association_hits_network_timeout(node) -> None:  # type: ignore[no-untyped-def]
    sock = _associate(node, [(CTImageStorage, ExplicitVRLittleEndian)])
    sock.settimeout(DEADLINE_S)
    assert _closed_by_peer(sock) == 0x07  # aborted after network_timeout_s of silence
    sock.close()


@pytest.mark.parametrize("stage", ["after request", "mid command", "mid dataset",
                                   "after dataset"])
def test_abort_at_any_point_leaves_nothing_half_written(node, stage: str) -> None:  # type: ignore[no-untyped-def]
    ds = next(iter_datasets(patients=1, series=1, slices=1, rows=64, cols=64, seed=11))
    del ds.file_meta
    raw = encode(ds)
    before = node.call(node.node.store.counts()).instances
    sock = _connect(node)
    sock.sendall(_request_pdu([(CTImageStorage, ExplicitVRLittleEndian)]))
    abort = struct.pack(">BxIBBBB", 7, 4, 0, 0, 0, 0)
    if stage != "after request":
        _read_pdu(sock)
        cmd = dimse.encode(AffectedSOPClassUID=CTImageStorage, CommandField=1, MessageID=1,
                           Priority=0, CommandDataSetType=0,
                           AffectedSOPInstanceUID=ds.SOPInstanceUID)
        if stage == "mid command":
            sock.sendall(_pdata(1, 1, cmd[:20]))
        else:
            sock.sendall(_pdata(1, 3, cmd))
            if stage == "mid dataset":
                sock.sendall(_pdata(1, 0, raw[:len(raw) // 2]))
            else:
                sock.sendall(_pdata(1, 2, raw))
                _read_pdu(sock)  # the C-STORE-RSP
    sock.sendall(abort)
    sock.close()
    assert _echo_ok(node)  # the node's association threads are fine
    after = node.call(node.node.store.counts()).instances
    assert after == before + (1 if stage == "after dataset" else 0)
    temp = [p for p in node.cfg.objects_dir.rglob(".tmp-*")] if node.cfg.objects_dir.exists() \
        else []
    assert temp == [], "an aborted C-STORE left a partial file"


def test_c_cancel_stops_a_large_c_find(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    generate(tmp_path / "many", patients=40, studies=1, series=1, slices=1, rows=16, cols=16,
             seed=22)
    dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r", "127.0.0.1",
          node.dicom_port, tmp_path / "many", check=True)
    sock = _associate(node, [(FIND, ExplicitVRLittleEndian)])
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    cmd = dimse.encode(AffectedSOPClassUID=FIND, CommandField=dimse.C_FIND_RQ, MessageID=7,
                       Priority=0, CommandDataSetType=0)
    cancel = dimse.encode(CommandField=dimse.C_CANCEL_RQ, MessageIDBeingRespondedTo=7,
                          CommandDataSetType=dimse.NO_DATASET)
    # The cancel is already waiting when the node checks between result batches.
    sock.sendall(_pdata(1, 3, cmd) + _pdata(1, 2, encode(query)) + _pdata(1, 3, cancel))
    statuses = []
    buf = b""
    while True:
        pdu_type, body = _read_pdu(sock)
        assert pdu_type == 4
        item_len, _cx, control = struct.unpack_from(">IBB", body)
        if control & 1:
            buf += body[6:4 + item_len]
            if control & 2:
                statuses.append(dimse.decode(buf).get("Status"))
                buf = b""
                if statuses[-1] != 0xFF00:
                    break
    sock.close()
    assert statuses[-1] == 0xFE00, statuses  # Cancel
    assert 0 < statuses.count(0xFF00) < 40


def test_several_senders_at_once(node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    synth = generate(tmp_path / "par", patients=4, studies=1, series=1, slices=6, rows=32,
                     cols=32, seed=21)
    before = node.call(node.node.store.counts()).instances
    files = sorted(synth.files)
    errors: list[str] = []

    def send(part: list[Path]) -> None:
        proc = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "127.0.0.1",
                     node.dicom_port, *part)
        if proc.returncode != 0:
            errors.append(proc.stderr)

    threads = [threading.Thread(target=send, args=(files[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S * 4)
    assert errors == []
    assert node.call(node.node.store.counts()).instances == before + len(files)


def test_unsupported_command_is_aborted_not_crashing(node) -> None:  # type: ignore[no-untyped-def]
    sock = _associate(node, [(CTImageStorage, ExplicitVRLittleEndian)])
    n_action = dimse.encode(AffectedSOPClassUID=CTImageStorage, CommandField=0x0130,
                            MessageID=1, CommandDataSetType=dimse.NO_DATASET)
    sock.sendall(_pdata(1, 3, n_action))
    assert _closed_by_peer(sock) == 0x07
    sock.close()
    assert _echo_ok(node)


def test_pynetdicom_scu_with_unlimited_pdu_stores(node) -> None:  # type: ignore[no-untyped-def]
    """pynetdicom sends a whole data set as one PDV when the node announces no limit;
    the node must take it in bounded pieces all the same (here: max_pdu set)."""
    ds = next(iter_datasets(patients=1, series=1, slices=1, rows=256, cols=256, seed=12))
    ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    ae.maximum_pdu_size = 0
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
