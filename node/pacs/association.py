"""One DICOM association on one thread: negotiation, DIMSE messages in and out, release
and abort (PS3.8 upper layer, acceptor and requestor).

pynetdicom runs three threads per association (socket reactor, DUL, association), each
polling with 1 ms sleeps, and deep-copies the server's 177 x 22 presentation contexts
for every association (about 150 ms: echoscu 208 -> 58 ms with a shallow copy, issue
15). Here the association's own thread reads and writes its socket; pynetdicom still
decodes and encodes the association PDUs and negotiates the presentation contexts.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import (A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ,
                            A_ASSOCIATE_RQ as A_ASSOCIATE_RQ_PDU, A_RELEASE_RP, A_RELEASE_RQ)
from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                       ImplementationVersionNameNotification,
                                       MaximumLengthNotification,
                                       SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import (PresentationContext, negotiate_as_acceptor,
                                     negotiate_as_requestor)

from . import dimse
from .accept_memo import AcceptMemo, Negotiated
from .wire import (A_ABORT, A_ASSOCIATE_AC as AC_TYPE, A_ASSOCIATE_RJ as RJ_TYPE,
                   A_ASSOCIATE_RQ, A_RELEASE_RQ as RELEASE_RQ_TYPE, A_RELEASE_RP as RP_TYPE,
                   P_DATA_TF, UNLIMITED_SEND_PDU, PduSocket, PeerClosed, ProtocolError, tune)

log = logging.getLogger("medfed.dicom")

APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")
IMPLEMENTATION_VERSION = "MEDFED_1"
MAX_COMMAND_BYTES = 1 << 16
MAX_IDENTIFIER_BYTES = 1 << 22


class Aborted(Exception):
    """The peer aborted, closed the connection, or broke the protocol: stop now."""


class Released(Exception):
    """The peer asked for (and got) an orderly release."""


@dataclass
class Rejection:
    """Why an association request is refused (PS3.8 9.3.4 result/source/diagnostic)."""

    result: int
    source: int
    diagnostic: int


class DatasetSink(Protocol):
    """Where the data set of an incoming message goes while it streams in."""

    def write(self, chunk: bytes | bytearray) -> None: ...
    def abandon(self) -> None: ...


class BytesSink:
    """Collects a small data set (an identifier, a response) in memory, bounded."""

    def __init__(self, limit: int = MAX_IDENTIFIER_BYTES) -> None:
        self.parts: list[bytes | bytearray] = []
        self.size = 0
        self.limit = limit

    def write(self, chunk: bytes | bytearray) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ProtocolError(f"data set larger than {self.limit} bytes", 0x06)
        self.parts.append(chunk)

    def abandon(self) -> None:
        self.parts.clear()

    def value(self) -> bytes:
        return b"".join(self.parts)


@dataclass
class Message:
    """One DIMSE message as received: context, command and where its data set went."""

    context: PresentationContext
    command: dimse.Command
    dataset: DatasetSink | None = None


SinkFactory = Callable[["Association", PresentationContext, dimse.Command], DatasetSink]


@dataclass
class Association:
    """An established association: the socket, what was negotiated, who the peer is."""

    io: PduSocket
    calling_ae: str
    called_ae: str
    peer_host: str
    contexts: dict[int, PresentationContext] = field(default_factory=dict)
    dimse_timeout: float | None = None
    network_timeout: float | None = None

    # -- receiving --------------------------------------------------------------
    def receive(self, sink_for: SinkFactory | None = None) -> Message:
        """The next DIMSE message. Raises Released / Aborted (after answering the peer
        as the protocol wants). ``sink_for`` chooses where a data set streams to."""
        command = bytearray()
        context: PresentationContext | None = None
        decoded: dimse.Command | None = None
        sink: DatasetSink | None = None
        try:
            while True:
                pdu_type, length = self.io.read_header()
                if pdu_type != P_DATA_TF:
                    self._control_pdu(pdu_type, length, mid_message=decoded is not None
                                      or bool(command))
                    continue
                for frag in self.io.fragments(length):
                    ctx = self.contexts.get(frag.context_id)
                    if ctx is None or (context is not None and ctx is not context):
                        raise ProtocolError("data for a presentation context that was "
                                            "not accepted", 0x06)
                    context = ctx
                    if frag.is_command:
                        if decoded is not None:
                            raise ProtocolError("command fragment inside a data set", 0x02)
                        command += frag.data
                        if len(command) > MAX_COMMAND_BYTES:
                            raise ProtocolError("command set too long", 0x06)
                        if frag.is_last:
                            decoded = dimse.decode(bytes(command))
                            if not decoded.has_dataset:
                                return Message(ctx, decoded)
                            sink = (sink_for(self, ctx, decoded) if sink_for is not None
                                    else BytesSink())
                    else:
                        if decoded is None or sink is None:
                            raise ProtocolError("data set before its command", 0x02)
                        sink.write(frag.data)
                        if frag.is_last:
                            return Message(ctx, decoded, sink)
        except dimse.CommandError as exc:
            self._abandon(sink)
            self.abort(0x02, 0x06)
            raise Aborted(f"undecodable command set: {exc}") from exc
        except ProtocolError as exc:
            self._abandon(sink)
            self.abort(0x02, exc.abort_reason)
            raise Aborted(str(exc)) from exc
        except (PeerClosed, TimeoutError, OSError) as exc:
            self._abandon(sink)
            if isinstance(exc, TimeoutError):
                self.abort(0x02, 0x00)
                raise Aborted("network timeout: the peer sent nothing in time") from exc
            raise Aborted(str(exc) or type(exc).__name__) from exc
        except BaseException:
            self._abandon(sink)
            raise

    @staticmethod
    def _abandon(sink: DatasetSink | None) -> None:
        if sink is not None:
            sink.abandon()

    def _control_pdu(self, pdu_type: int, length: int, *, mid_message: bool) -> None:
        self.io.read_exact(length)
        if pdu_type == A_ABORT:
            raise Aborted("the peer aborted the association")
        if pdu_type == RELEASE_RQ_TYPE and not mid_message:
            self.io.send(A_RELEASE_RP().encode())
            raise Released()
        raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", 0x02)

    def cancel_requested(self, message_id: int) -> bool:
        """Without blocking: has the peer sent a C-CANCEL for ``message_id``? Any other
        input here (an abort, a new request) ends the association."""
        if not self.io.has_input():
            return False
        msg = self.receive()
        if msg.command.field == dimse.C_CANCEL_RQ and \
                msg.command.get("MessageIDBeingRespondedTo") == message_id:
            return True
        self.abort(0x02, 0x02)
        raise Aborted("unexpected message during an operation")

    # -- sending ----------------------------------------------------------------
    def send(self, context_id: int, command: bytes,
             dataset: bytes | memoryview | None = None) -> None:
        try:
            self.io.send_message(context_id, command, dataset)
        except PeerClosed as exc:
            raise Aborted(str(exc)) from exc

    def abort(self, source: int = 0x00, reason: int = 0x00) -> None:
        """Send A-ABORT (best effort) and close."""
        pdu = A_ABORT_RQ()
        pdu.source, pdu.reason_diagnostic = source, reason
        try:
            self.io.send(pdu.encode())
        except PeerClosed:
            pass
        self.io.close()

    def release(self) -> None:
        """As requestor: A-RELEASE-RQ, wait for the RP (bounded), close."""
        try:
            self.io.send(A_RELEASE_RQ().encode())
            while True:
                pdu_type, length = self.io.read_header()
                self.io.read_exact(length)
                if pdu_type in (RP_TYPE, A_ABORT):
                    break
        except (PeerClosed, ProtocolError, OSError):
            pass
        self.io.close()


def serve_messages(assoc: Association, sink_for: SinkFactory,
                   dispatch: Callable[[Association, Message], None]) -> None:
    """Receive and dispatch DIMSE messages until the peer releases or the association
    aborts; the socket is closed either way."""
    try:
        while True:
            dispatch(assoc, assoc.receive(sink_for))
    except Released:
        assoc.io.close()
    except Aborted as exc:
        log.info("association with %s ended: %s", assoc.calling_ae, exc)
        assoc.io.close()


def unsupported(assoc: Association, msg: Message) -> None:
    """A command this association does not serve: abort (PS3.7 has no status for it)."""
    if msg.dataset is not None:
        msg.dataset.abandon()
    log.info("association with %s: unsupported DIMSE command 0x%04X on %s; aborting",
             assoc.calling_ae, msg.command.field, msg.context.abstract_syntax)
    assoc.abort(0x02, 0x02)
    raise Aborted("unsupported command")


# -- negotiation ------------------------------------------------------------------
def user_information(max_pdu: int) -> list[Any]:
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    return [max_length, impl, version]


def _peer_max_pdu(items: Sequence[Any]) -> int:
    for item in items:
        if isinstance(item, MaximumLengthNotification):
            return int(item.maximum_length_received or 0)
    return 0


def send_max_pdu(peer_max: int) -> int:
    return peer_max if peer_max and peer_max >= 64 else UNLIMITED_SEND_PDU


@dataclass(frozen=True)
class Request:
    """An A-ASSOCIATE-RQ as received: decoded, and the PDU bytes it came from (the key
    of an ``AcceptMemo``)."""

    primitive: A_ASSOCIATE
    pdu: bytes


def read_request(io: PduSocket, memo: AcceptMemo | None = None) -> Request:
    """The A-ASSOCIATE-RQ a new connection must start with (PS3.8 9.3.2); a request
    ``memo`` has seen before is not decoded again."""
    pdu_type, length = io.read_header()
    if pdu_type != A_ASSOCIATE_RQ:
        raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}", 0x02)
    raw = io.read_pdu_body(pdu_type, length)   # the whole PDU, header included
    known = memo.request(raw) if memo is not None else None
    if known is not None:
        return Request(known, raw)
    pdu = A_ASSOCIATE_RQ_PDU()
    try:
        pdu.decode(raw)
        primitive = pdu.to_primitive()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeError) as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})", 0x06) from exc
    if memo is not None:
        memo.remember_request(raw, primitive)
    return Request(primitive, raw)


def reject(io: PduSocket, request: Request, why: Rejection) -> None:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source = why.result, why.source
    primitive.diagnostic = why.diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    io.send(pdu.encode())


def accept(io: PduSocket, request: Request, supported: list[PresentationContext],
           max_pdu: int, memo: AcceptMemo | None = None) -> dict[int, PresentationContext]:
    """Negotiate with pynetdicom's acceptor rules, send A-ASSOCIATE-AC; returns the
    accepted contexts by id. ``supported`` is shared, read only (never copied); so are
    the contexts a ``memo`` (made for this ``supported`` and ``max_pdu``) answers with."""
    known = memo.negotiated(request.pdu) if memo is not None else None
    if known is None:
        known = _negotiate(request.primitive, supported, max_pdu)
        if memo is not None:
            memo.remember_negotiated(request.pdu, known)
    io.max_send = known.max_send
    io.send(known.answer)
    return {int(cx.context_id): cx for cx in known.contexts}


def _negotiate(request: A_ASSOCIATE, supported: list[PresentationContext],
               max_pdu: int) -> Negotiated:
    roles = {item.sop_class_uid: (item.scu_role, item.scp_role)
             for item in request.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    proposed = request.presentation_context_definition_list
    result, role_replies = negotiate_as_acceptor(proposed, supported, roles)
    _keep_compressed_first_choice(proposed, result, supported)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = request.calling_ae_title
    primitive.called_ae_title = request.called_ae_title
    primitive.result, primitive.result_source = 0x00, 0x01
    primitive.presentation_context_definition_results_list = result
    primitive.user_information = user_information(max_pdu) + list(role_replies)
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return Negotiated(pdu.encode(), send_max_pdu(_peer_max_pdu(request.user_information)),
                      tuple(cx for cx in result if cx.result == 0x00))


def _keep_compressed_first_choice(proposed: list[PresentationContext],
                                  result: list[PresentationContext],
                                  supported: list[PresentationContext]) -> None:
    """Our order prefers Explicit VR Little Endian, but when a sender's first choice in
    a context is a compressed syntax we support, take that: the data is compressed
    already and converting it costs the sender (or fails: dcmtk cannot decode RLE)."""
    first = {int(cx.context_id): cx.transfer_syntax[0] for cx in proposed
             if cx.transfer_syntax}
    wanted = {cid: ts for cid, ts in first.items() if UID(ts).is_compressed}
    if not wanted:   # the usual case: no map of our 177 contexts (0.19 ms built as sets)
        return
    ours = {cx.abstract_syntax: cx.transfer_syntax for cx in supported}
    for cx in result:
        choice = wanted.get(int(cx.context_id))
        if (cx.result == 0x00 and choice is not None
                and choice in ours.get(cx.abstract_syntax, ())):
            cx.transfer_syntax = [choice]


def request_association(host: str, port: int, *, calling_ae: str, called_ae: str,
                        contexts: list[PresentationContext], timeout: float,
                        max_pdu: int = 0) -> Association:
    """As requestor (C-MOVE sub-associations): connect, negotiate, return the
    association. Raises ConnectionError with a reason an operator can act on."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") \
            from exc
    tune(sock)
    io = PduSocket(sock, max_receive=max_pdu)
    for n, cx in enumerate(contexts):
        cx.context_id = 2 * n + 1
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.presentation_context_definition_list = contexts
    primitive.user_information = user_information(max_pdu)
    rq = A_ASSOCIATE_RQ_PDU()
    rq.from_primitive(primitive)
    try:
        io.send(rq.encode())
        pdu_type, length = io.read_header()
        body = io.read_pdu_body(pdu_type, length)
    except (PeerClosed, ProtocolError, OSError) as exc:
        io.close()
        raise ConnectionError(f"association with {called_ae} at {host}:{port} failed: "
                              f"{exc}") from exc
    if pdu_type == RJ_TYPE:
        io.close()
        raise ConnectionError(f"{called_ae} at {host}:{port} rejected the association "
                              f"(check that it admits AE {calling_ae})")
    if pdu_type != AC_TYPE:
        io.close()
        raise ConnectionError(f"{called_ae} at {host}:{port} answered with PDU type "
                              f"0x{pdu_type:02X}")
    ac = A_ASSOCIATE_AC()
    ac.decode(body)
    answer = ac.to_primitive()
    accepted = negotiate_as_requestor(contexts, answer.presentation_context_definition_results_list)
    io.max_send = send_max_pdu(_peer_max_pdu(answer.user_information))
    return Association(io, calling_ae, called_ae, host,
                       {int(cx.context_id): cx for cx in accepted if cx.result == 0x00},
                       dimse_timeout=timeout, network_timeout=timeout)
