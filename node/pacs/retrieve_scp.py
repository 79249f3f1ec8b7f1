"""C-GET and C-MOVE sub-operations: stored instances sent as C-STORE-RQs.

When the receiver accepted the transfer syntax a file was stored in, its data set
bytes go out as they are on disk, never decoded: pynetdicom's handlers must yield a
decoded Dataset that is encoded again (and getscu's Explicit VR was answered in
Implicit VR, about 15 ms of CPU per instance; C-GET ran at 0.10-0.16x Orthanc, issue
15). Otherwise the instance is decoded and written in a syntax the receiver accepts,
or that one sub-operation fails with a log line.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Iterable

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext, build_context

from . import codec, dimse, status
from .association import Aborted, Association
from .backend import RetrieveItem
from .wire import PeerClosed

log = logging.getLogger("medfed.dicom")

_PREFERRED_FALLBACK = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class SubOperationFailed(Exception):
    """One instance could not be sent (the others still are)."""


@dataclass
class Progress:
    """Sub-operation counts of one C-GET/C-MOVE (PS3.4 C.4.2.1.6, C.4.3.1.6)."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    def counts(self, *, final: bool = False) -> dict[str, int | None]:
        return {"NumberOfRemainingSuboperations": None if final else self.remaining,
                "NumberOfCompletedSuboperations": self.completed,
                "NumberOfFailedSuboperations": self.failed,
                "NumberOfWarningSuboperations": self.warning}

    def final_status(self) -> int:
        return status.SUCCESS if not (self.failed or self.warning) else status.SUBOPS_WARNING


def choose_context(item: RetrieveItem, contexts: Iterable[PresentationContext]
                   ) -> tuple[PresentationContext, bool]:
    """The context to send ``item`` on and whether it goes as stored (no decoding)."""
    offered = [cx for cx in contexts if cx.abstract_syntax == item.sop_class_uid]
    for cx in offered:
        if cx.transfer_syntax[0] == item.transfer_syntax:
            return cx, True
    stored = UID(item.transfer_syntax)
    for ts in _PREFERRED_FALLBACK:
        for cx in offered:
            if cx.transfer_syntax[0] == ts:
                return cx, False
    if not stored.is_compressed:
        for cx in offered:
            if not UID(cx.transfer_syntax[0]).is_compressed:
                return cx, False
    raise SubOperationFailed("the receiver accepts none of the syntaxes this instance "
                             "can be sent in")


def encoded_for(item: RetrieveItem, context: PresentationContext, as_stored: bool
                ) -> tuple[str, memoryview | bytes]:
    """(SOP Instance UID, data set bytes in the context's transfer syntax)."""
    if as_stored:
        try:
            return codec.stored_dataset(item.path)
        except OSError as exc:
            raise SubOperationFailed(f"stored file unreadable ({exc.strerror})") from exc
        except ValueError:
            pass  # not in the expected form: decode and write it below
    try:
        ds = dcmread(item.path)
        target = str(context.transfer_syntax[0])
        if ds.file_meta.TransferSyntaxUID.is_compressed and not UID(target).is_compressed:
            ds.decompress()
        return str(ds.SOPInstanceUID), codec.encode(ds, target)
    except Exception as exc:
        raise SubOperationFailed(f"cannot transcode to {context.transfer_syntax[0]}: "
                                 f"{type(exc).__name__}") from exc


@dataclass
class Outgoing:
    """One C-STORE-RQ read from its file and encoded, ready to send."""

    msg_id: int
    parts: list[bytes | memoryview]


class Sender:
    """Sends instances as C-STORE-RQs on one association and waits for each answer.
    ``prepare`` (read + encode) is separate from ``start`` (send) and ``finish`` (wait)
    so the next instance can be read while the receiver stores the last one."""

    def __init__(self, assoc: Association, contexts: list[PresentationContext], *,
                 move_originator: tuple[str, int] | None = None) -> None:
        self.assoc = assoc
        self.contexts = contexts
        self.move_originator = move_originator
        self.cancelled = False  # a C-CANCEL arrived while waiting for a response
        self._ids = itertools.count(1)

    def send(self, item: RetrieveItem, before: bytes = b"") -> int:
        """Store one instance; returns the receiver's status. ``before`` (PDUs already
        encoded, e.g. the C-GET's pending response) goes out in the same write. Raises
        SubOperationFailed when it could not be sent, Aborted when the link broke."""
        return self.finish(self.start(self.prepare(item), before))

    def prepare(self, item: RetrieveItem) -> Outgoing:
        context, as_stored = choose_context(item, self.contexts)
        sop_uid, payload = encoded_for(item, context, as_stored)
        msg_id = next(self._ids) & 0xFFFF
        origin_ae, origin_id = self.move_originator or (None, None)
        command = dimse.encode(
            AffectedSOPClassUID=item.sop_class_uid, CommandField=dimse.C_STORE_RQ,
            MessageID=msg_id, Priority=0, CommandDataSetType=dimse.HAS_DATASET,
            AffectedSOPInstanceUID=sop_uid,
            MoveOriginatorApplicationEntityTitle=origin_ae, MoveOriginatorMessageID=origin_id)
        return Outgoing(msg_id, self.assoc.io.message_parts(int(context.context_id), command,
                                                            payload))

    def start(self, out: Outgoing, before: bytes = b"") -> int:
        try:
            self.assoc.io.send_parts([before, *out.parts] if before else out.parts)
        except PeerClosed as exc:
            raise Aborted(str(exc)) from exc
        return out.msg_id

    def finish(self, msg_id: int) -> int:
        return self._wait_for(msg_id)

    def _wait_for(self, msg_id: int) -> int:
        while True:
            msg = self.assoc.receive()
            cmd = msg.command
            if cmd.field == dimse.C_STORE_RSP and cmd.get("MessageIDBeingRespondedTo") == msg_id:
                return int(cmd.get("Status", status.UNABLE_TO_PROCESS))
            if cmd.field == dimse.C_CANCEL_RQ:
                self.cancelled = True
                continue
            self.assoc.abort(0x02, 0x02)
            raise Aborted("unexpected message while waiting for a C-STORE response")


def count(progress: Progress, item_status: int, sop_hint: str = "") -> None:
    if item_status == status.SUCCESS:
        progress.completed += 1
    elif item_status in (0xB000, 0xB007, 0xB006):
        progress.warning += 1
    else:
        progress.failed += 1
        if sop_hint:
            progress.failed_uids.append(sop_hint)


def move_contexts(items: list[RetrieveItem]) -> list[PresentationContext]:
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
        contexts.append(build_context(sop_class, list(_PREFERRED_FALLBACK)))
    return contexts[:128]
