"""The node's DICOM service (SCP): C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE.

pynetdicom runs each association in its own thread; handlers here stay thin and hand
the work to the ingestor (store) or to the query code on the node's event loop.
Notification handlers only log and audit; the intervention handlers answer with
DIMSE statuses and never let an exception reach pynetdicom unexplained.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from ..config.model import DicomConfig
from . import status
from .ingest import Ingestor

log = logging.getLogger("medfed.dicom")

PATIENT_ROOT = "PATIENT_ROOT"
STUDY_ROOT = "STUDY_ROOT"
MODEL_BY_SOP_CLASS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
    PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
    StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
    StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
}


class Auditor(Protocol):
    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: Any) -> Any: ...


class QueryBackend(Protocol):
    """What the SCP needs from the query side (local SQLite, or the federation)."""

    def find(self, identifier: Dataset, model: str, *, called_ae: str,
             calling_ae: str) -> Awaitable[list[Dataset]]: ...

    def select(self, identifier: Dataset, model: str, *, called_ae: str,
               calling_ae: str) -> Awaitable[list["RetrieveItem"]]: ...


@dataclass(frozen=True)
class RetrieveItem:
    """One instance a C-GET/C-MOVE will send: where its file is and how it is encoded."""

    path: Path
    sop_class_uid: str
    transfer_syntax: str


def set_nodelay(event: evt.Event) -> None:
    """Nagle + delayed ACK cost ~40 ms per DIMSE exchange; turn Nagle off."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _reject(event: evt.Event, diagnostic: int) -> None:
    """A-ASSOCIATE-RJ (permanent, service user) and wait for it to go out, as
    pynetdicom's own ACSE does, so the caller sees the reason instead of an abort."""
    event.assoc.acse.send_reject(0x01, 0x01, diagnostic)
    event.assoc.kill()


def _model(event: evt.Event) -> str:
    return MODEL_BY_SOP_CLASS.get(event.request.AffectedSOPClassUID, STUDY_ROOT)


def _calling_ae(event: evt.Event) -> str:
    return event.assoc.requestor.ae_title.strip()


class DicomService:
    def __init__(self, cfg: DicomConfig, *, ingestor: Ingestor, backend: QueryBackend,
                 audit: Auditor, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.ingestor = ingestor
        self.backend = backend
        self.audit = audit
        self.loop = loop
        self.ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None

    # -- setup ------------------------------------------------------------------
    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_pdu_size = self.cfg.max_pdu
        ae.network_timeout = self.cfg.network_timeout_s
        ae.acse_timeout = self.cfg.acse_timeout_s
        ae.dimse_timeout = self.cfg.dimse_timeout_s
        ae.maximum_associations = 32
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES,
                                     scp_role=True, scu_role=False)
        for sop in MODEL_BY_SOP_CLASS:
            ae.add_supported_context(sop)
        return ae

    def _handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
        ]

    def start(self) -> int:
        """Start listening; returns the bound port (config port 0 = any free port)."""
        self._server = self.ae.start_server(
            (self.cfg.host, self.cfg.port), block=False, evt_handlers=self._handlers())
        port = int(self._server.server_address[1])
        log.info("DICOM service %s listening on %s:%d", self.cfg.ae_title, self.cfg.host, port)
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.ae.shutdown()

    def _call(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout or self.cfg.dimse_timeout_s)

    # -- association ------------------------------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        rq = event.assoc.requestor.primitive
        calling = rq.calling_ae_title.strip()
        called = rq.called_ae_title.strip()
        host = event.assoc.requestor.address
        if not self.cfg.is_allowed(calling, host):
            log.warning("rejected association from AE %r at %s: not in the allowlist "
                        "(add \"%s@%s\" to [dicom] allow to admit it)", calling, host,
                        calling, host)
            self.audit.append("dicom.associate", f"{calling}@{host}", "rejected",
                              reason="calling AE not allowed")
            _reject(event, 0x03)
            return
        if called not in (self.cfg.ae_title, self.cfg.federation_ae_title):
            log.warning("rejected association from %s@%s: called AE %r is not this node",
                        calling, host, called)
            self.audit.append("dicom.associate", f"{calling}@{host}", "rejected",
                              reason="called AE not recognised")
            _reject(event, 0x07)
            return
        self.audit.append("dicom.associate", f"{calling}@{host}", "accepted", called=called)

    def _on_echo(self, event: evt.Event) -> int:
        return status.SUCCESS

    # -- C-STORE ----------------------------------------------------------------
    def _on_store(self, event: evt.Event) -> Dataset:
        calling = _calling_ae(event)
        try:
            ds = event.dataset
            encoded = event.encoded_dataset(include_meta=True)
        except Exception as exc:
            log.info("C-STORE from %s: undecodable dataset (%s)", calling, type(exc).__name__)
            self.audit.append("dicom.store", calling, "failed", reason="cannot parse")
            out = Dataset()
            out.Status = status.CANNOT_PARSE
            out.ErrorComment = "dataset cannot be parsed"
            return out
        outcome = self.ingestor.ingest(
            ds, encoded, context_sop_class=event.context.abstract_syntax,
            affected_sop_instance=event.request.AffectedSOPInstanceUID or "",
            transfer_syntax=event.context.transfer_syntax)
        if outcome.status == status.SUCCESS:
            self.audit.append("dicom.store", calling, "duplicate" if outcome.duplicate else "ok",
                              subject=f"instance:{outcome.instance_id}" if outcome.instance_id else "")
        else:
            log.info("C-STORE from %s refused: 0x%04X %s", calling, outcome.status, outcome.reason)
            self.audit.append("dicom.store", calling, "failed",
                              status=f"0x{outcome.status:04X}", reason=outcome.reason)
        return outcome.as_dataset()

    # -- C-FIND -----------------------------------------------------------------
    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        calling = _calling_ae(event)
        called = event.assoc.requestor.primitive.called_ae_title.strip()  # as requested
        try:
            identifier = event.identifier
            results = self._call(self.backend.find(identifier, _model(event), called_ae=called,
                                                   calling_ae=calling))
        except QueryRefused as exc:
            self.audit.append("dicom.find", calling, "failed", reason=exc.reason)
            yield _failure(exc.status, exc.reason), None
            return
        except Exception as exc:
            log.exception("C-FIND from %s failed", calling)
            self.audit.append("dicom.find", calling, "failed", reason=type(exc).__name__)
            yield _failure(status.UNABLE_TO_PROCESS, "query failed on this node"), None
            return
        level = str(identifier.get("QueryRetrieveLevel", ""))
        sent = 0
        for ds in results:
            if event.is_cancelled:
                self.audit.append("dicom.find", calling, "cancelled", level=level, matches=sent)
                yield status.CANCEL, None
                return
            sent += 1
            yield status.PENDING, ds
        self.audit.append("dicom.find", calling, "ok", level=level, matches=sent, called=called)

    # -- C-GET / C-MOVE ---------------------------------------------------------
    def _release(self, items: list[RetrieveItem]) -> None:
        release = getattr(self.backend, "release", None)
        if release is not None:
            release(items)

    def _select(self, event: evt.Event) -> list[RetrieveItem]:
        calling = _calling_ae(event)
        called = event.assoc.requestor.primitive.called_ae_title.strip()  # as requested
        return self._call(self.backend.select(event.identifier, _model(event),
                                              called_ae=called, calling_ae=calling))

    def _send_items(self, event: evt.Event, items: list[RetrieveItem], action: str,
                    calling: str, accepted: dict[str, set[str]] | None = None
                    ) -> Iterator[tuple[int, Dataset | None]]:
        for n, item in enumerate(items):
            if event.is_cancelled:
                self.audit.append(action, calling, "cancelled", sent=n, total=len(items))
                yield status.CANCEL, None
                return
            try:
                ds = dcmread(item.path)
            except Exception as exc:
                log.error("%s: stored file unreadable (%s); stopping after %d of %d",
                          action, type(exc).__name__, n, len(items))
                self.audit.append(action, calling, "failed", sent=n, total=len(items),
                                  reason="stored file unreadable")
                yield status.QR_SUBOPS_OUT_OF_RESOURCES, None
                return
            if accepted is not None:
                try:
                    ds = fit_to_contexts(ds, item, accepted)
                except ValueError as exc:
                    # Sent anyway: pynetdicom finds no context, counts the sub-operation
                    # as failed and carries on with the rest.
                    log.warning("%s: instance %d of %d cannot be sent: %s", action, n + 1,
                                len(items), exc)
            yield status.PENDING, ds
        self.audit.append(action, calling, "ok", instances=len(items))

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        calling = _calling_ae(event)
        try:
            items = self._select(event)
        except QueryRefused as exc:
            self.audit.append("dicom.get", calling, "failed", reason=exc.reason)
            yield 1  # pynetdicom wants a sub-operation count before any status
            yield _failure(exc.status, exc.reason), None
            return
        except Exception:
            log.exception("C-GET from %s failed", calling)
            yield 1
            yield _failure(status.UNABLE_TO_PROCESS, "retrieve failed on this node"), None
            return
        yield len(items)
        try:
            yield from self._send_items(event, items, "dicom.get", calling,
                                        accepted_syntaxes(event.assoc.accepted_contexts))
        finally:
            self._release(items)

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        calling = _calling_ae(event)
        dest_ae = event.move_destination.decode() if isinstance(
            event.move_destination, bytes) else str(event.move_destination)
        dest = self.cfg.destination(dest_ae)
        if dest is None:
            log.warning("C-MOVE from %s to unknown destination %r (add it to "
                        "[dicom.destinations])", calling, dest_ae.strip())
            self.audit.append("dicom.move", calling, "failed", reason="unknown destination",
                              destination=dest_ae.strip())
            yield None, None
            return
        try:
            items = self._select(event)
        except QueryRefused as exc:
            self.audit.append("dicom.move", calling, "failed", reason=exc.reason)
            yield dest.host, dest.port
            yield 1  # pynetdicom wants a sub-operation count before any status
            yield _failure(exc.status, exc.reason), None
            return
        except Exception:
            log.exception("C-MOVE from %s failed", calling)
            yield dest.host, dest.port
            yield 1
            yield _failure(status.UNABLE_TO_PROCESS, "retrieve failed on this node"), None
            return
        kwargs = {"contexts": storage_contexts_for(items),
                  "evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay)]}
        try:
            yield dest.host, dest.port, kwargs
            yield len(items)
            yield from self._send_items(event, items, "dicom.move", calling)
        finally:
            self._release(items)


class QueryRefused(Exception):
    """A query or retrieve the node will not run, with the status to answer."""

    def __init__(self, reason: str, code: int = status.IDENTIFIER_MISMATCH) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = code


def _failure(code: int, text: str) -> Dataset:
    """A status dataset with an ErrorComment the calling system can show."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = text[:64]
    return ds


def accepted_syntaxes(contexts: list[Any]) -> dict[str, set[str]]:
    """SOP class -> transfer syntaxes the peer accepted for receiving it (C-GET)."""
    out: dict[str, set[str]] = {}
    for cx in contexts:
        out.setdefault(cx.abstract_syntax, set()).update(cx.transfer_syntax)
    return out


UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")


def fit_to_contexts(ds: Dataset, item: RetrieveItem, accepted: dict[str, set[str]]) -> Dataset:
    """Send as stored when the receiver accepts that syntax; otherwise decompress to an
    uncompressed syntax it accepts. Raises ValueError (the sub-operation then counts as
    failed, with a log line) when neither works."""
    syntaxes = accepted.get(item.sop_class_uid, set())
    stored = ds.file_meta.TransferSyntaxUID
    if stored in syntaxes or not stored.is_compressed:
        return ds  # as stored, or pynetdicom converts between uncompressed syntaxes
    if not any(ts in syntaxes for ts in UNCOMPRESSED):
        raise ValueError("receiver accepts none of the syntaxes this instance can be sent in")
    try:
        ds.decompress()
    except Exception as exc:
        raise ValueError(f"cannot transcode from {stored.name}: {exc}") from exc
    return ds


def storage_contexts_for(items: list[RetrieveItem]) -> list[Any]:
    """Presentation contexts for a C-MOVE sub-association: each SOP class with its
    stored transfer syntax first, so instances go out as they were stored whenever the
    destination accepts that, and uncompressed fallbacks otherwise."""
    by_class: dict[str, list[str]] = {}
    for item in items:
        syntaxes = by_class.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax not in syntaxes:
            syntaxes.append(item.transfer_syntax)
    contexts = []
    for sop_class, syntaxes in by_class.items():
        for ts in syntaxes:
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]))
    return contexts[:128]
