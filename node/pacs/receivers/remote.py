"""The receiver's side of the metadata: claims, commits, checkpoints and audit entries
answered by the node's main process (``pool.py``).

Each association thread has its own channel to the main process (``bind``): its
claim, commit, release and audit messages go there in order and it reads the replies
itself. The journal's checkpoints go over the receiver's control channel.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from ...store.db import StoreError
from ...store.records import InstanceRecord
from ...store.writer import IngestResult, StoredFile
from ..ledger import Jobs
from .channel import Calls, ChannelClosed, Next, Sequential
from .messages import record_to_json, result_from_json, stored_from_json, stored_to_json


def _unavailable(exc: Exception) -> StoreError:
    return StoreError(f"the node's main process did not answer: {exc}")


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        raise StoreError(str(reply["error"]))
    return reply


class RemoteLedger:
    """``Ledger`` over the channels. A lost main process is a store that is unavailable
    (StoreError): the instance is refused, never acknowledged."""

    def __init__(self, control: Calls) -> None:
        self.control = control
        self._local = threading.local()

    def bind(self, calls: Sequential | None) -> None:
        """The calling thread's own channel (None: unbind)."""
        self._local.calls = calls
        self._local.committed = False

    def assoc_calls(self) -> Sequential:
        calls = getattr(self._local, "calls", None)
        if calls is None:
            raise StoreError("no channel to the node's main process on this thread")
        return calls

    @contextmanager
    def claim(self, sop_uid: str) -> Iterator["RemoteClaim"]:
        calls = self.assoc_calls()
        try:
            claim = RemoteClaim(calls.start("claim", sop=sop_uid))
        except ChannelClosed as exc:
            raise _unavailable(exc) from exc
        self._local.committed = False
        try:
            yield claim
        finally:
            if not self._local.committed:   # a commit ends the claim in the main process
                try:
                    claim.settle()
                    calls.channel.send({"op": "release", "sop": sop_uid})
                except (ChannelClosed, StoreError):
                    pass  # the main process is gone, and its claims with it

    def commit(self, record: InstanceRecord, stored: StoredFile, source: str, jobs: Jobs,
               *, relaxed: bool) -> IngestResult:
        try:
            reply = self.assoc_calls().call(
                "commit", record=record_to_json(record), stored=stored_to_json(stored),
                source=source, jobs=[list(j) for j in jobs], relaxed=relaxed)
        except ChannelClosed as exc:
            raise _unavailable(exc) from exc
        result = result_from_json(_checked(reply)["result"])
        self._local.committed = True
        return result

    def journal_seq(self, key: str) -> int:
        try:
            return int(_checked(self.control.call("journal_seq", key=key))["seq"])
        except ChannelClosed as exc:
            raise _unavailable(exc) from exc

    def persist_journal_seq(self, key: str, upto: int) -> None:
        try:
            _checked(self.control.call("persist", key=key, upto=upto))
        except ChannelClosed as exc:
            raise _unavailable(exc) from exc


class RemoteClaim:
    """The claim request is on its way; ``known`` reads the main process's answer."""

    def __init__(self, pending: Next) -> None:
        self.pending = pending

    def known(self) -> StoredFile | None:
        try:
            reply = self.pending.result()
        except ChannelClosed as exc:
            raise _unavailable(exc) from exc
        return stored_from_json(_checked(reply).get("known"))

    def settle(self) -> None:
        """Read the answer if nobody did (the next reply on the channel is then the
        next call's): an ingest refused before it asked."""
        self.pending.result()


class RemoteAudit:
    """``Auditor`` over the association thread's channel: the entry is written by the
    main process's audit log, in order with that association's commits."""

    def __init__(self, ledger: RemoteLedger) -> None:
        self.ledger = ledger

    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: Any) -> None:
        try:
            self.ledger.assoc_calls().channel.send(
                {"op": "audit", "action": action, "actor": actor, "outcome": outcome,
                 "subject": subject, "detail": detail})
        except (ChannelClosed, StoreError):
            pass
