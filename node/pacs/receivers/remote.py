"""The receiver's side of the metadata: claims, commits, checkpoints and audit entries
answered by the node's main process (``pool.py``)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from ...store.db import StoreError
from ...store.records import InstanceRecord
from ...store.writer import IngestResult, StoredFile
from ..ledger import Jobs
from .channel import Calls, Channel, ChannelClosed, Pending
from .messages import record_to_json, result_from_json, stored_from_json, stored_to_json


class RemoteLedger:
    """``Ledger`` over the channel. A lost main process is a store that is unavailable
    (StoreError): the instance is refused, never acknowledged."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self._local = threading.local()   # per association thread: claim committed?

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        try:
            reply = self.calls.call(op, **fields)
        except ChannelClosed as exc:
            raise StoreError(f"the node's main process did not answer: {exc}") from exc
        if "error" in reply:
            raise StoreError(str(reply["error"]))
        return reply

    @contextmanager
    def claim(self, sop_uid: str) -> Iterator["RemoteClaim"]:
        try:
            claim = RemoteClaim(self.calls.start("claim", sop=sop_uid))
        except ChannelClosed as exc:
            raise StoreError(f"the node's main process did not answer: {exc}") from exc
        self._local.committed = False
        try:
            yield claim
        finally:
            if not self._local.committed:   # a commit ends the claim in the main process
                try:
                    self.calls.channel.send({"op": "release", "sop": sop_uid})
                except ChannelClosed:
                    pass  # the main process is gone, and its claims with it

    def commit(self, record: InstanceRecord, stored: StoredFile, source: str, jobs: Jobs,
               *, relaxed: bool) -> IngestResult:
        reply = self._call("commit", record=record_to_json(record),
                           stored=stored_to_json(stored), source=source,
                           jobs=[list(j) for j in jobs], relaxed=relaxed)
        self._local.committed = True
        return result_from_json(reply["result"])

    def journal_seq(self, key: str) -> int:
        return int(self._call("journal_seq", key=key)["seq"])

    def persist_journal_seq(self, key: str, upto: int) -> None:
        self._call("persist", key=key, upto=upto)


class RemoteClaim:
    """The claim request is on its way; ``known`` waits for the main process's answer."""

    def __init__(self, pending: Pending) -> None:
        self.pending = pending

    def known(self) -> StoredFile | None:
        try:
            reply = self.pending.result()
        except ChannelClosed as exc:
            raise StoreError(f"the node's main process did not answer: {exc}") from exc
        if "error" in reply:
            raise StoreError(str(reply["error"]))
        return stored_from_json(reply.get("known"))


class RemoteAudit:
    """``Auditor`` over the channel: the entry is written by the main process's audit
    log, in the order the receiver sent it (fire and forget, as a local append)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: Any) -> None:
        try:
            self.channel.send({"op": "audit", "action": action, "actor": actor,
                               "outcome": outcome, "subject": subject, "detail": detail})
        except ChannelClosed:
            pass
