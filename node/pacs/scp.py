"""The node's DICOM service (SCP): C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE, C-CANCEL,
on a plain port and an optional DICOM TLS port (PS3.15 B.1).

One thread per association runs the whole exchange (server.py, association.py):
C-STORE streams into its file and is committed in that thread; C-FIND and the
instance list of C-GET/C-MOVE come from the query backend on the node's event loop;
C-GET/C-MOVE send stored bytes as they are when the receiver accepts their syntax.
Measured against Orthanc 1.10 in bench/RESULTS.md ("ingest").
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any, Awaitable

from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ..config.model import DicomConfig
from . import codec, dimse, status
from .accept_memo import AcceptMemo
from .association import (Aborted, Association, BytesSink, Message, Rejection, Released,
                          accept, read_request, reject, request_association,
                          serve_messages, unsupported)
from .fast_identifier import FastIdentifier
from .fast_identifier import parse as fast_parse
from .backend import Auditor, QueryBackend, QueryRefused, RetrieveItem
from .identifier import QR_LEVEL
from .ingest import Ingestor
from .receivers.messages import Handoff
from .receivers.pool import ReceiverPool
from .retrieve_scp import (Outgoing, Progress, Sender, SubOperationFailed, count,
                           move_contexts)
from .server import AssociationServer
from .response_wire import ResponseRow
from .store_scp import StoreHandler
from .tls import server_context
from .wire import ProtocolError, PduSocket

__all__ = ["DicomService", "QueryBackend", "QueryRefused", "RetrieveItem", "Auditor",
           "set_nodelay", "storage_contexts_for", "MODEL_BY_SOP_CLASS"]

log = logging.getLogger("medfed.dicom")

PATIENT_ROOT = "PATIENT_ROOT"
STUDY_ROOT = "STUDY_ROOT"
FIND_CLASSES = {PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
                StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT}
GET_CLASSES = {PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
               StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT}
MOVE_CLASSES = {PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
                StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT}
MODEL_BY_SOP_CLASS = {**FIND_CLASSES, **GET_CLASSES, **MOVE_CLASSES}

# Explicit VR Little Endian first, as Orthanc prefers: storescu then sends Explicit VR
# files unconverted and C-GET of them needs no conversion (about 15 ms of CPU per
# instance each way with pynetdicom's Implicit-first list, issue 15).
PREFERRED_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian] + [
    ts for ts in ALL_TRANSFER_SYNTAXES
    if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
QUERY_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                  DeflatedExplicitVRLittleEndian]
STORE_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_RESULT_BATCH = 32
# C-MOVE: at most one pending response per this many seconds (progress for the
# requester; the final response always follows)
MOVE_PENDING_INTERVAL_S = 0.05


def set_nodelay(event: Any) -> None:
    """pynetdicom event handler (SCU side): Nagle + delayed ACK cost ~40 ms per DIMSE
    exchange; turn Nagle off."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def storage_contexts_for(items: list[RetrieveItem]) -> list[Any]:
    """Presentation contexts that send ``items`` as stored when the peer accepts that."""
    return move_contexts(items)


def supported_contexts() -> list[PresentationContext]:
    """What the SCP accepts, built once per service and shared by every association."""
    contexts = [build_context(Verification, QUERY_SYNTAXES)]
    for cx in AllStoragePresentationContexts:
        context = build_context(cx.abstract_syntax, PREFERRED_SYNTAXES)
        context.scp_role, context.scu_role = True, False
        contexts.append(context)
    for sop in MODEL_BY_SOP_CLASS:
        contexts.append(build_context(sop, QUERY_SYNTAXES))
    return contexts


STORAGE_SOP_CLASSES = frozenset([str(cx.abstract_syntax)
                                  for cx in AllStoragePresentationContexts] + [Verification])


def _storage_only(contexts: dict[int, PresentationContext]) -> bool:
    """Only C-STORE and C-ECHO can arrive on it: a receiver process can serve it."""
    return bool(contexts) and all(str(cx.abstract_syntax) in STORAGE_SOP_CLASSES
                                  for cx in contexts.values())


def _level(identifier: Dataset | FastIdentifier) -> str:
    """QueryRetrieveLevel as sent (for the audit entry)."""
    if isinstance(identifier, FastIdentifier):
        terms = identifier.terms(QR_LEVEL)
        return "\\".join(terms)
    return str(identifier.get("QueryRetrieveLevel", ""))


def _failure_command(request: dimse.Command, field_: int, code: int, text: str,
                     **extra: Any) -> bytes:
    return dimse.response(request, field_, code, ErrorComment=text[:64], **extra)


class DicomService:
    def __init__(self, cfg: DicomConfig, *, ingestor: Ingestor, backend: QueryBackend,
                 audit: Auditor, loop: asyncio.AbstractEventLoop,
                 receivers: ReceiverPool | None = None) -> None:
        self.cfg = cfg
        self.receivers = receivers   # storage associations go there (started by the caller)
        self.ingestor = ingestor
        self.backend = backend
        self.audit = audit
        self.loop = loop
        self.supported = supported_contexts()
        self.accept_memo = AcceptMemo()   # for self.supported and cfg.max_pdu
        self.store = StoreHandler(ingestor.files, ingestor, audit)
        self._server: AssociationServer | None = None
        self.last_request = 0.0   # time.monotonic() of the latest DIMSE request
        self.port: int | None = None
        self.tls_port: int | None = None
        self._storage_lock = threading.Lock()
        self._storage_here = 0     # storage associations served in this process now

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> int:
        """Start listening; returns the bound port (config port 0 = any free port).
        With ``tls_port`` set, DICOM TLS listens there too (``self.tls_port``)."""
        tls = server_context(self.cfg) if self.cfg.tls_port is not None else None
        server = AssociationServer(self._serve, handshake_timeout=self.cfg.acse_timeout_s)
        self._server = server
        try:
            self.port = server.listen(self.cfg.host, self.cfg.port)
            if tls is not None:
                self.tls_port = server.listen(self.cfg.host, int(self.cfg.tls_port or 0), tls)
        except BaseException:
            server.stop()
            raise
        log.info("DICOM service %s listening on %s:%d%s", self.cfg.ae_title, self.cfg.host,
                 self.port, f" (TLS on {self.tls_port})" if self.tls_port else "")
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.receivers is not None:
            self.receivers.stop()

    def _call(self, coro: Awaitable[Any]) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(self.cfg.dimse_timeout_s)

    # -- one association --------------------------------------------------------
    def _serve(self, sock: socket.socket, addr: tuple[str, int], tls: bool) -> None:
        io = PduSocket(sock, max_receive=self.cfg.max_pdu)
        sock.settimeout(self.cfg.acse_timeout_s)  # ARTIM: the request must come soon
        try:
            request = read_request(io, self.accept_memo)
        except ProtocolError as exc:
            log.info("DICOM connection from %s: %s", addr[0], exc)
            Association(io, "", "", addr[0]).abort(0x02, exc.abort_reason)
            return
        except (Aborted, OSError, Exception) as exc:  # closed, timed out, garbage
            log.info("DICOM connection from %s closed before association: %s", addr[0],
                     type(exc).__name__)
            io.close()
            return
        calling = request.primitive.calling_ae_title.strip()
        called = request.primitive.called_ae_title.strip()
        why = self._refusal(calling, called, addr[0])
        if why is not None:
            reject(io, request, why)
            self._drain_and_close(io)
            return
        contexts = accept(io, request, self.supported, self.cfg.max_pdu, self.accept_memo)
        self.audit.append("dicom.associate", f"{calling}@{addr[0]}", "accepted", called=called,
                          **({"tls": True} if tls else {}))
        storage = self.receivers is not None and not tls and _storage_only(contexts)
        if storage and not self._serve_storage_here():
            handoff = Handoff.of(calling, called, addr[0], io.max_send, io.max_receive,
                                 contexts, io.buffered)
            if self.receivers.hand_over(sock, handoff):  # type: ignore[union-attr]
                return  # the receiver process serves it; we only close our descriptor
            storage = False
        sock.settimeout(self.cfg.network_timeout_s)
        assoc = Association(io, calling, called, addr[0], contexts,
                            dimse_timeout=self.cfg.dimse_timeout_s,
                            network_timeout=self.cfg.network_timeout_s)
        try:
            self._message_loop(assoc)
        finally:
            if storage:
                with self._storage_lock:
                    self._storage_here -= 1

    def _serve_storage_here(self) -> bool:
        """The first storage association at a time stays in this process (no hand-off,
        no round trips to the ledger: one sender is as fast as without receivers);
        those that arrive while it runs go to the receivers."""
        with self._storage_lock:
            if self._storage_here >= 1:
                return False
            self._storage_here += 1
            return True

    def _refusal(self, calling: str, called: str, host: str) -> Rejection | None:
        if not self.cfg.is_allowed(calling, host):
            log.warning("rejected association from AE %r at %s: not in the allowlist "
                        "(add \"%s@%s\" to [dicom] allow to admit it)", calling, host,
                        calling, host)
            self.audit.append("dicom.associate", f"{calling}@{host}", "rejected",
                              reason="calling AE not allowed")
            return Rejection(0x01, 0x01, 0x03)
        if called not in (self.cfg.ae_title, self.cfg.federation_ae_title):
            log.warning("rejected association from %s@%s: called AE %r is not this node",
                        calling, host, called)
            self.audit.append("dicom.associate", f"{calling}@{host}", "rejected",
                              reason="called AE not recognised")
            return Rejection(0x01, 0x01, 0x07)
        if self._server is not None and self._server.open_count + (
                self.receivers.active if self.receivers is not None else 0) \
                > self.cfg.max_associations:
            log.warning("rejected association from %s@%s: %d associations already open",
                        calling, host, self.cfg.max_associations)
            self.audit.append("dicom.associate", f"{calling}@{host}", "rejected",
                              reason="too many associations")
            return Rejection(0x02, 0x03, 0x02)
        return None

    @staticmethod
    def _drain_and_close(io: PduSocket) -> None:
        """Let the rejection reach the peer: stop sending, wait briefly for its close."""
        try:
            io.sock.shutdown(socket.SHUT_WR)
            io.sock.settimeout(2.0)
            while io.sock.recv(4096):
                pass
        except OSError:
            pass
        io.close()

    def _message_loop(self, assoc: Association) -> None:
        serve_messages(assoc, self.store.sink_for, self._dispatch)

    def _dispatch(self, assoc: Association, msg: Message) -> None:
        self.last_request = time.monotonic()
        cmd, sop = msg.command, str(msg.context.abstract_syntax)
        if self.store.answer(assoc, msg):
            pass
        elif cmd.field == dimse.C_FIND_RQ and sop in FIND_CLASSES:
            self._find(assoc, msg)
        elif cmd.field == dimse.C_GET_RQ and sop in GET_CLASSES:
            self._get(assoc, msg)
        elif cmd.field == dimse.C_MOVE_RQ and sop in MOVE_CLASSES:
            self._move(assoc, msg)
        else:
            unsupported(assoc, msg)

    def _identifier(self, msg: Message) -> Dataset:
        sink = msg.dataset
        if not isinstance(sink, BytesSink):
            raise QueryRefused("the request carries no identifier", status.IDENTIFIER_MISMATCH)
        try:
            ds = codec.decode(sink.value(), str(msg.context.transfer_syntax[0]))
            list(ds.keys())  # force parsing now
            _ = [ds[t] for t in ds.keys()]
        except Exception:
            raise QueryRefused("identifier cannot be parsed", status.IDENTIFIER_MISMATCH) \
                from None
        return ds

    @staticmethod
    def _fast_identifier(msg: Message, ts: str) -> FastIdentifier | None:
        """The common simple identifier read straight from its bytes (None: pydicom)."""
        sink = msg.dataset
        return fast_parse(sink.value(), ts) if isinstance(sink, BytesSink) else None

    # -- C-FIND -----------------------------------------------------------------
    def _find(self, assoc: Association, msg: Message) -> None:
        cmd, cx_id = msg.command, int(msg.context.context_id)
        ts = str(msg.context.transfer_syntax[0])
        calling, called = assoc.calling_ae, assoc.called_ae
        model = FIND_CLASSES[str(msg.context.abstract_syntax)]
        try:
            find_sync = getattr(self.backend, "find_sync", None)
            results = None
            fast = self._fast_identifier(msg, ts) if find_sync is not None else None
            identifier: Dataset | FastIdentifier = (fast if fast is not None
                                                    else self._identifier(msg))
            if find_sync is not None:  # answered right here, in the association's thread
                results = find_sync(identifier, model, called_ae=called, calling_ae=calling)
            if results is None:
                if fast is not None:  # the async path (federation) takes a Dataset
                    identifier = self._identifier(msg)
                results = self._call(self.backend.find(identifier, model, called_ae=called,
                                                        calling_ae=calling))
        except QueryRefused as exc:
            self.audit.append("dicom.find", calling, "failed", reason=exc.reason)
            assoc.send(cx_id, _failure_command(cmd, dimse.C_FIND_RSP, exc.status, exc.reason))
            return
        except Exception as exc:
            log.exception("C-FIND from %s failed", calling)
            self.audit.append("dicom.find", calling, "failed", reason=type(exc).__name__)
            assoc.send(cx_id, _failure_command(cmd, dimse.C_FIND_RSP, status.UNABLE_TO_PROCESS,
                                               "query failed on this node"))
            return
        level = _level(identifier)
        pending = dimse.response(cmd, dimse.C_FIND_RSP, status.PENDING,
                                 dataset_type=dimse.HAS_DATASET)
        sent = 0
        batch: list[bytes] = []
        for ds in results:
            if sent % _RESULT_BATCH == 0 and sent:
                assoc.io.send(b"".join(batch))
                batch.clear()
                if assoc.cancel_requested(cmd.message_id):
                    self.audit.append("dicom.find", calling, "cancelled", level=level,
                                      matches=sent)
                    assoc.send(cx_id, dimse.response(cmd, dimse.C_FIND_RSP, status.CANCEL))
                    return
            try:
                raw = ds.encode(ts) if isinstance(ds, ResponseRow) else codec.encode(ds, ts)
                batch.append(assoc.io.message(cx_id, pending, raw))
            except Exception as exc:
                log.warning("C-FIND from %s: a result could not be encoded (%s); skipped",
                            calling, type(exc).__name__)
                continue
            sent += 1
        batch.append(assoc.io.message(cx_id, dimse.response(cmd, dimse.C_FIND_RSP,
                                                            status.SUCCESS)))
        assoc.io.send(b"".join(batch))
        self.audit.append("dicom.find", calling, "ok", level=level, matches=sent, called=called)

    # -- C-GET / C-MOVE ---------------------------------------------------------
    def _select(self, assoc: Association, msg: Message, model: str) -> list[RetrieveItem]:
        identifier = self._identifier(msg)
        return self._call(self.backend.select(identifier, model, called_ae=assoc.called_ae,
                                              calling_ae=assoc.calling_ae))

    def _release(self, items: list[RetrieveItem]) -> None:
        release = getattr(self.backend, "release", None)
        if release is not None:
            release(items)

    def _selected(self, assoc: Association, msg: Message, models: dict[str, str],
                  action: str, field_: int) -> list[RetrieveItem] | None:
        """The instances to send, or None after answering with a failure."""
        cmd, cx_id = msg.command, int(msg.context.context_id)
        try:
            return self._select(assoc, msg, models[str(msg.context.abstract_syntax)])
        except QueryRefused as exc:
            self.audit.append(action, assoc.calling_ae, "failed", reason=exc.reason)
            assoc.send(cx_id, _failure_command(cmd, field_, exc.status, exc.reason))
        except Exception:
            log.exception("%s from %s failed", action, assoc.calling_ae)
            self.audit.append(action, assoc.calling_ae, "failed", reason="retrieve failed")
            assoc.send(cx_id, _failure_command(cmd, field_, status.UNABLE_TO_PROCESS,
                                               "retrieve failed on this node"))
        return None

    def _get(self, assoc: Association, msg: Message) -> None:
        items = self._selected(assoc, msg, GET_CLASSES, "dicom.get", dimse.C_GET_RSP)
        if items is None:
            return
        assoc.network_timeout = self.cfg.dimse_timeout_s
        assoc.io.sock.settimeout(self.cfg.dimse_timeout_s)
        contexts = [cx for cx in assoc.contexts.values() if cx.as_scu]
        try:
            self._send_all(assoc, msg, items, Sender(assoc, contexts), "dicom.get",
                           dimse.C_GET_RSP)
        finally:
            self._release(items)
            assoc.io.sock.settimeout(self.cfg.network_timeout_s)

    def _move(self, assoc: Association, msg: Message) -> None:
        cmd = msg.command
        dest_ae = str(cmd.get("MoveDestination", "")).strip()
        dest = self.cfg.destination(dest_ae)
        if dest is None:
            log.warning("C-MOVE from %s to unknown destination %r (add it to "
                        "[dicom.destinations])", assoc.calling_ae, dest_ae)
            self._move_failed(assoc, msg, dest_ae, status.MOVE_DESTINATION_UNKNOWN,
                              "unknown destination")
            return
        items = self._selected(assoc, msg, MOVE_CLASSES, "dicom.move", dimse.C_MOVE_RSP)
        if items is None:
            return
        try:
            try:
                sub = request_association(dest.host, dest.port, calling_ae=self.cfg.ae_title,
                                          called_ae=dest.ae_title,
                                          contexts=move_contexts(items),
                                          timeout=self.cfg.dimse_timeout_s)
            except ConnectionError as exc:
                log.warning("C-MOVE from %s: %s", assoc.calling_ae, exc)
                self._move_failed(assoc, msg, dest_ae, status.QR_SUBOPS_OUT_OF_RESOURCES,
                                  "destination unreachable")
                return
            sender = Sender(sub, list(sub.contexts.values()),
                            move_originator=(assoc.calling_ae, cmd.message_id))
            try:
                self._send_all(assoc, msg, items, sender, "dicom.move", dimse.C_MOVE_RSP)
            finally:
                sub.release()
        finally:
            self._release(items)

    def _move_failed(self, assoc: Association, msg: Message, dest_ae: str, code: int,
                     reason: str) -> None:
        self.audit.append("dicom.move", assoc.calling_ae, "failed", reason=reason,
                          destination=dest_ae)
        assoc.send(int(msg.context.context_id),
                   _failure_command(msg.command, dimse.C_MOVE_RSP, code, f"move {reason}"))

    def _send_all(self, assoc: Association, msg: Message, items: list[RetrieveItem],
                  sender: Sender, action: str, field_: int) -> None:
        """Every sub-operation, pending responses while they run, then the final one.

        C-GET: a pending response after each sub-operation, riding in the same write
        as the next C-STORE-RQ. C-MOVE: the next C-STORE-RQ goes to the destination
        first and the pending response to the requester after it, at most one per
        MOVE_PENDING_INTERVAL_S (PS3.4 C.4.2.3.1: pending responses are optional):
        the destination, not this node, sets a C-MOVE's pace, so it should never wait
        while the requester is woken for a progress report (see bench/RESULTS.md)."""
        cmd, cx_id = msg.command, int(msg.context.context_id)
        progress = Progress(len(items))
        same_link = sender.assoc is assoc  # C-GET: sub-operations on this association
        pending = b""  # C-GET: the last pending response rides with the next C-STORE
        deferred: bytes | None = None  # C-MOVE: sent once the next sub-operation left
        last_update = time.monotonic()

        def prepare(i: int) -> Outgoing | SubOperationFailed | None:
            if i >= len(items):
                return None
            try:
                return sender.prepare(items[i])
            except SubOperationFailed as exc:
                return exc

        ahead = prepare(0)
        for n, item in enumerate(items):
            if sender.cancelled or (not same_link and assoc.cancel_requested(cmd.message_id)):
                self.audit.append(action, assoc.calling_ae, "cancelled", sent=n,
                                  total=len(items))
                assoc.send(cx_id, dimse.response(cmd, field_, status.CANCEL,
                                                 **progress.counts()))
                return
            out, ahead = ahead, None
            try:
                if not isinstance(out, Outgoing):
                    raise out or SubOperationFailed("not prepared")
                msg_id = sender.start(out, pending)
                pending = b""
                if deferred is not None:
                    assoc.io.send(deferred)
                    deferred = None
                ahead = prepare(n + 1)  # read while the receiver stores this one
                count(progress, sender.finish(msg_id))
            except SubOperationFailed as exc:
                log.warning("%s: instance %d of %d cannot be sent: %s", action, n + 1,
                            len(items), exc)
                if pending:
                    assoc.io.send(pending)
                count(progress, status.UNABLE_TO_PROCESS)
            except Aborted:
                if same_link:
                    raise
                log.warning("%s: the destination ended the sub-association after %d of "
                            "%d instances", action, n, len(items))
                progress.failed = progress.total - progress.completed - progress.warning
                break
            pending = b""
            if ahead is None:
                ahead = prepare(n + 1)
            if progress.remaining:
                update = dimse.response(cmd, field_, status.PENDING, **progress.counts())
                if same_link:
                    pending = assoc.io.message(cx_id, update)
                else:
                    now = time.monotonic()
                    if now - last_update >= MOVE_PENDING_INTERVAL_S:
                        deferred, last_update = assoc.io.message(cx_id, update), now
        outcome = "ok" if not progress.failed else "failed"
        self.audit.append(action, assoc.calling_ae, outcome, instances=len(items),
                          failed=progress.failed)
        assoc.send(cx_id, dimse.response(cmd, field_, progress.final_status(),
                                         **progress.counts(final=True)))
