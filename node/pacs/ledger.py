"""The metadata side of an ingest: the duplicate check, the row commit and the journal
position - in this process (``LocalLedger``) or in the node's main process for a
receiver process (``node.pacs.receivers.RemoteLedger``).

Why a claim and not only a look-up: between "is this SOP instance stored?" and the
commit of its rows, the file is written under its final name. Two copies of one
instance arriving at once (two associations, or two receiver processes) must not both
write it, so the check holds a claim on the SOP Instance UID until the rows are
committed or the attempt is given up. ``Claims`` is event-driven (no polling): a
waiting claim is granted by the release before it, in the releasing thread.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterable, Iterator, Protocol

from ..store.db import MetadataStore, StoredFile
from ..store.records import InstanceRecord
from ..store.writer import IngestResult

JOURNAL_KEY = "ingest_journal_seq"
Jobs = Iterable[tuple[str, str, float]]


class Claim(Protocol):
    def known(self) -> StoredFile | None:
        """The stored copy's file if the instance is stored already (may wait for the
        claim: work done before this call overlaps that wait)."""


class Ledger(Protocol):
    def claim(self, sop_uid: str) -> ContextManager[Claim]:
        """Held while the instance is written and committed (its commit may end it
        early, as for a receiver's claim)."""

    def commit(self, record: InstanceRecord, stored: StoredFile, source: str, jobs: Jobs,
               *, relaxed: bool) -> IngestResult: ...

    def journal_seq(self, key: str) -> int: ...

    def persist_journal_seq(self, key: str, upto: int) -> None:
        """Record a checkpoint durably (a synchronous commit: the relaxed commits
        before it become durable with it)."""


class Claims:
    """Exclusive claims on keys; ``acquire`` calls ``granted`` now or when the holder
    before it releases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Callable[[], None]]] = {}

    def acquire(self, key: str, granted: Callable[[], None]) -> None:
        with self._lock:
            queue = self._waiting.get(key)
            if queue is not None:
                queue.append(granted)
                return
            self._waiting[key] = []
        granted()

    def release(self, key: str) -> None:
        with self._lock:
            queue = self._waiting.get(key)
            if queue is None:
                return
            if not queue:
                del self._waiting[key]
                return
            granted = queue.pop(0)
        granted()

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        """Blocking form for a thread of this process."""
        ready = threading.Event()
        self.acquire(key, ready.set)
        ready.wait()
        try:
            yield
        finally:
            self.release(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)


class Known:
    """A claim whose answer is at hand."""

    def __init__(self, stored: StoredFile | None) -> None:
        self._stored = stored

    def known(self) -> StoredFile | None:
        return self._stored


class LocalLedger:
    """The node's own metadata store, shared by its in-process ingests and (through
    the receiver pool) by its receiver processes: one ``Claims`` for all of them."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.claims = Claims()

    @contextmanager
    def claim(self, sop_uid: str) -> Iterator[Claim]:
        with self.claims.held(sop_uid):
            yield Known(self.store.instance_file_sync(sop_uid))

    def commit(self, record: InstanceRecord, stored: StoredFile, source: str, jobs: Jobs,
               *, relaxed: bool) -> IngestResult:
        return self.store.ingest_sync(record, stored, source, jobs=jobs, relaxed=relaxed)

    def journal_seq(self, key: str) -> int:
        row = self.store.writer.read_one("SELECT value FROM meta WHERE key=?", (key,))
        return int(row[0]) if row else 0

    def persist_journal_seq(self, key: str, upto: int) -> None:
        self.store.writer.run(lambda conn: conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
            "value=excluded.value", (key, str(upto))))
