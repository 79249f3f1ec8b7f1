"""Blocking DICOM client (SCU) towards the upstream PACS: C-ECHO, C-FIND, C-GET.

Why blocking: pynetdicom is a threaded library; callers run these functions in a worker
thread (``asyncio.to_thread``). Every step has a deadline: connecting, association
negotiation and each DIMSE message must complete within ``timeout_s``, or the
association is aborted and a typed error says what to check.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from .scp import set_nodelay  # importing scp also keeps identifiers (PHI) out of logs

log = logging.getLogger("medfed.upstream")

T = TypeVar("T")

_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000
_WARNING = 0xB000


class UpstreamError(Exception):
    """Something went wrong talking to the upstream PACS."""


class UpstreamUnavailable(UpstreamError):
    """The upstream PACS cannot be reached, or stopped answering."""


class UpstreamRefused(UpstreamUnavailable):
    """The upstream PACS rejected our association or our request."""


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    timeout_s: float

    def where(self) -> str:
        return f"PACS {self.ae_title!r} at {self.host}:{self.port}"


class Abort:
    """Lets another thread abort the association a blocking call is using."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._assoc: Association | None = None
        self.fired = False

    def attach(self, assoc: Association) -> None:
        with self._lock:
            self._assoc = assoc
            fired = self.fired
        if fired:
            assoc.abort()

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            assoc = self._assoc
        if assoc is not None and assoc.is_alive():
            assoc.abort()


def _connect_problem(peer: Peer) -> str | None:
    """Why no association: probe TCP once, only after a failure, for a useful message.
    None when the port does accept connections (the PACS itself said no)."""
    try:
        with socket.create_connection((peer.host, peer.port), timeout=min(peer.timeout_s, 5)):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _rejection_text(assoc: Association) -> str:
    primitive = assoc.acceptor.primitive
    if primitive is None:
        return "no reason given"
    parts = [getattr(primitive, "result_str", ""), getattr(primitive, "reason_str", "")]
    return ", ".join(p for p in parts if p) or "no reason given"


def _advice(peer: Peer) -> str:
    return (f"Register AE {peer.calling_ae_title!r} (this node's host and DICOM port) in the "
            f"PACS's list of DICOM modalities, or set [upstream] calling_ae_title to an AE "
            f"the PACS already knows; also check [upstream] ae_title")


def associate(peer: Peer, contexts: Sequence[tuple[str, Sequence[str] | None]],
              *, ext_neg: Sequence[Any] = (), handlers: Sequence[Any] = (),
              abort: Abort | None = None) -> Association:
    """An established association, or UpstreamUnavailable/UpstreamRefused saying why.

    A PACS that rejects an association and closes at once can race pynetdicom into
    seeing an abort instead of the rejection; one retry usually shows the real answer.
    """
    for attempt in (1, 2):
        started = time.monotonic()
        assoc = _try_associate(peer, contexts, ext_neg, handlers)
        if assoc.is_established:
            _responses_to_caller_only(assoc)
            if abort is not None:
                abort.attach(assoc)
            return assoc
        if assoc.is_rejected and getattr(assoc.acceptor.primitive, "result", 1) == 0x02:
            raise UpstreamUnavailable(
                f"the {peer.where()} is busy and rejected the association for now "
                f"({_rejection_text(assoc)}); the node will try again")
        if assoc.is_rejected:
            raise UpstreamRefused(
                f"the {peer.where()} rejected the association from AE "
                f"{peer.calling_ae_title!r} ({_rejection_text(assoc)}). {_advice(peer)}")
        problem = _connect_problem(peer)
        if problem is not None:
            raise UpstreamUnavailable(
                f"cannot reach the {peer.where()} ({problem}). Check that the PACS is "
                f"running and that [upstream] host and port are right")
        quick = time.monotonic() - started < peer.timeout_s / 2
        if attempt == 1 and quick and not (abort is not None and abort.fired):
            time.sleep(0.2)
        else:
            break
    raise UpstreamRefused(
        f"the {peer.where()} accepts connections but closed the association request from "
        f"AE {peer.calling_ae_title!r} without accepting it. {_advice(peer)}")


def _responses_to_caller_only(assoc: Association) -> None:
    """pynetdicom's association reactor polls the DIMSE queue (non-blocking) between
    and, in a narrow race under load, during our own requests, and drops any response
    it finds there ("Received unexpected C-FIND service message", pynetdicom #875): a
    study silently missing from a sync. These associations only ever send requests,
    so the reactor's poll is made to find nothing and every message goes to the call
    waiting for it (only that poll uses block=False)."""
    blocking_get = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return blocking_get(block=True) if block else (None, None)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


def _try_associate(peer: Peer, contexts: Sequence[tuple[str, Sequence[str] | None]],
                   ext_neg: Sequence[Any], handlers: Sequence[Any]) -> Association:
    ae = AE(ae_title=peer.calling_ae_title)
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, attr, peer.timeout_s)
    for sop_class, syntaxes in contexts:
        if syntaxes is None:
            ae.add_requested_context(sop_class)
        else:
            ae.add_requested_context(sop_class, list(syntaxes))
    return ae.associate(peer.host, peer.port, ae_title=peer.ae_title,
                        ext_neg=list(ext_neg) or None,
                        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), *handlers])


def _status(rsp: Dataset | None, peer: Peer, what: str) -> int:
    code = getattr(rsp, "Status", None)
    if code is None:
        raise UpstreamUnavailable(
            f"the {peer.where()} stopped answering during {what} (no response within "
            f"{peer.timeout_s:g} s or the connection dropped); the node will try again")
    return int(code)


def echo(peer: Peer) -> None:
    assoc = associate(peer, [(Verification, None)])
    try:
        code = _status(assoc.send_c_echo(), peer, "C-ECHO")
    finally:
        _close(assoc)
    if code != _SUCCESS:
        raise UpstreamRefused(f"the {peer.where()} answered C-ECHO with status 0x{code:04X}")


class FindSession:
    """One association used for many C-FINDs (a whole sync pass)."""

    def __init__(self, peer: Peer, abort: Abort | None = None) -> None:
        self.peer = peer
        self.assoc = associate(peer, [(StudyRootQueryRetrieveInformationModelFind, None)],
                               abort=abort)

    def find(self, identifier: Dataset) -> list[Dataset]:
        level = str(identifier.QueryRetrieveLevel)
        out: list[Dataset] = []
        for rsp, ds in self.assoc.send_c_find(identifier,
                                              StudyRootQueryRetrieveInformationModelFind):
            code = _status(rsp, self.peer, f"C-FIND at {level} level")
            if code in _PENDING:
                if ds is not None:
                    out.append(ds)
                continue
            if code != _SUCCESS:
                comment = str(getattr(rsp, "ErrorComment", "") or "")[:64]
                raise UpstreamRefused(
                    f"the {self.peer.where()} refused a C-FIND at {level} level with status "
                    f"0x{code:04X}{': ' + comment if comment else ''}. Check that it "
                    f"allows queries from AE {self.peer.calling_ae_title!r}")
        return out

    def close(self) -> None:
        _close(self.assoc)

    def __enter__(self) -> "FindSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class GetOutcome:
    status: int
    completed: int
    failed: int
    warning: int


StoreHandler = Callable[[evt.Event], int]


def get(peer: Peer, identifiers: Sequence[Dataset], storage: Sequence[tuple[str, str]],
        on_store: StoreHandler, abort: Abort | None = None) -> list[GetOutcome]:
    """Run C-GETs on one association; instances arrive through ``on_store``."""
    contexts: list[tuple[str, Sequence[str] | None]] = [
        (StudyRootQueryRetrieveInformationModelGet, None)]
    contexts += [(sop_class, [ts]) for sop_class, ts in storage]
    roles = [build_role(c, scp_role=True) for c in dict.fromkeys(c for c, _ in storage)]
    assoc = associate(peer, contexts, ext_neg=roles,
                      handlers=[(evt.EVT_C_STORE, on_store)], abort=abort)
    try:
        return [_one_get(assoc, peer, identifier) for identifier in identifiers]
    finally:
        _close(assoc)


def _one_get(assoc: Association, peer: Peer, identifier: Dataset) -> GetOutcome:
    final: Dataset | None = None
    for rsp, _ds in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
        if _status(rsp, peer, "C-GET") not in _PENDING:
            final = rsp
    if final is None:
        raise UpstreamUnavailable(f"the {peer.where()} ended a C-GET without a final status")
    code = int(final.Status)
    counts = [int(getattr(final, f"NumberOf{k}Suboperations", 0) or 0)
              for k in ("Completed", "Failed", "Warning")]
    if code != _SUCCESS and (code & 0xF000) != _WARNING and counts[0] == 0:
        comment = str(getattr(final, "ErrorComment", "") or "")[:64]
        log.warning("the upstream PACS answered a C-GET with status 0x%04X%s and sent "
                    "nothing: the instances may have been deleted there, or it does not "
                    "allow C-GET for AE %r", code, f" ({comment})" if comment else "",
                    peer.calling_ae_title)
    return GetOutcome(code, *counts)


def _close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
    elif assoc.is_alive():
        assoc.abort()


async def call_blocking(fn: Callable[[], T], *, peer: Peer, abort: Abort, what: str,
                        deadline_s: float) -> T:
    """Run a blocking SCU call in a worker thread with an overall deadline.

    On the deadline (or cancellation) the association is aborted and the thread is
    given a moment to unwind, so it does not keep writing behind the caller's back.
    ``asyncio.wait`` rather than ``wait_for``: on Python 3.11 the latter can swallow a
    cancellation that races with completion, and a service would then never stop.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        done, _pending = await asyncio.wait({task}, timeout=deadline_s)
    except asyncio.CancelledError:
        abort.fire()
        await asyncio.wait({task}, timeout=peer.timeout_s)
        raise
    if not done:
        abort.fire()
        await asyncio.wait({task}, timeout=peer.timeout_s)
        raise UpstreamUnavailable(
            f"the {peer.where()} did not finish {what} within {deadline_s:g} s; the node "
            f"aborted the association and will try again")
    return task.result()
