"""Ingest of one received instance: validate, write the file, commit the rows.

Runs in the DICOM association's thread: the file write and the metadata commit (on the
store's writer connection) happen right here, in parallel across associations up to
the commit lock. The success status is returned only after the instance is durable,
so an acknowledged C-STORE survives kill -9 and a power cut: with the ingest journal
(journal.py, durability "full") its bytes are in a flushed journal record - one
flush, shared by the associations waiting at the same time - and its file and rows
follow without flushes of their own until the next checkpoint; without it the file
is flushed (file and folder) and the rows are committed with a flush.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Callable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..store.db import MetadataStore, StoredFile, StoreError
from ..store.files import FileStoreError, ObjectFiles, PartialFile
from ..store.records import InstanceRecord, RecordMemo, record_from_dataset
from . import status
from .journal import Checkpointer, Journal, JournalError, Record
from .ledger import JOURNAL_KEY, Claim, Ledger, LocalLedger
from .validate import InvalidInstance, ValidationMemo, validate_instance

log = logging.getLogger("medfed.ingest")


@dataclass(frozen=True)
class IngestOutcome:
    status: int
    reason: str = ""
    instance_id: int | None = None
    duplicate: bool = False

    def as_dataset(self) -> Dataset:
        rsp = Dataset()
        rsp.Status = self.status
        if self.reason:
            rsp.ErrorComment = self.reason[:64]
        return rsp


class Ingestor:
    """``store``: this process's metadata store, or ``ledger``: where the rows go
    instead (a receiver process commits through the node's main process).
    ``journal_key``: the meta key that records this journal's checkpoint."""

    def __init__(self, store: MetadataStore | None, files: ObjectFiles, *,
                 series_idle_s: float = 30.0, source: str = "local",
                 journal: Journal | None = None, ledger: Ledger | None = None,
                 journal_key: str = JOURNAL_KEY) -> None:
        if ledger is None:
            if store is None:
                raise ValueError("an Ingestor needs a store or a ledger")
            ledger = LocalLedger(store)
        self.ledger = ledger
        self.files = files
        self.series_idle_s = series_idle_s
        self.source = source
        self.journal = journal
        self.journal_key = journal_key
        self._checkpointer: Checkpointer | None = None
        self._validation_memo = ValidationMemo()
        self.last_received = 0.0   # time.monotonic() of the latest instance offered
        self._record_memo = RecordMemo()

    # -- the ingest journal -------------------------------------------------------
    def open_journal(self) -> int:
        """Replay what the journal holds after the last checkpoint (an instance whose
        file or rows did not survive is stored again from its record), checkpoint,
        and start journalling. Returns how many instances were restored."""
        if self.journal is None:
            return 0
        restored, newest = self.replay(self.journal, self.journal_key)
        self.resume_journal(newest)
        if restored:
            log.warning("restored %d instance(s) from the ingest journal", restored)
        return restored

    def resume_journal(self, checkpointed: int) -> None:
        """Start journalling after ``checkpointed``, with nothing left to replay (a
        receiver process: the main process replayed its journal just before)."""
        assert self.journal is not None
        self.journal.start(checkpointed)
        self._checkpointer = Checkpointer(self.journal, self._persist)

    def replay(self, journal: Journal, key: str) -> tuple[int, int]:
        """Store again what ``journal`` holds after the checkpoint recorded under
        ``key``, and record the new checkpoint: (instances restored, newest seq).
        Also for a receiver process's journal, replayed by the main process."""
        after = self.ledger.journal_seq(key)
        restored = sum(self._replay(record) for record in journal.records(after))
        newest = max(after, journal.last_seq)
        self.ledger.persist_journal_seq(key, newest)
        return restored, newest

    def close(self) -> None:
        """Checkpoint what is finished and close the journal (at shutdown)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self.journal is not None:
            self.journal.close()

    def checkpoint(self) -> int:
        """Make every finished instance's file and rows durable now; the journal seq."""
        return self._checkpointer.run_once() if self._checkpointer is not None else 0

    def _persist(self, upto: int, rels: list[str]) -> None:
        self.files.make_durable(rels)
        self.ledger.persist_journal_seq(self.journal_key, upto)

    def _replay(self, record: Record) -> int:
        try:
            ds = dcmread(BytesIO(record.data))
            sop_uid = str(ds.SOPInstanceUID)
        except Exception:
            log.error("an ingest journal record cannot be read back; skipped")
            return 0
        with self.ledger.claim(sop_uid) as claim:
            known = claim.known()
        sha = hashlib.sha256(record.data).hexdigest()
        if known is None:
            outcome = self.ingest(ds, record.data, context_sop_class=str(ds.SOPClassUID),
                                  affected_sop_instance=sop_uid,
                                  transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
            return 1 if outcome.status == status.SUCCESS and not outcome.duplicate else 0
        if known.sha256 != sha or _intact(self.files.path(known.path), sha):
            return 0  # another copy is the stored one, or the file survived
        self.files.write_atomic(known.path, (record.data,))
        return 1

    def ingest(self, ds: Dataset, encoded_file: bytes, *, context_sop_class: str,
               affected_sop_instance: str, transfer_syntax: str) -> IngestOutcome:
        """Store one instance; ``encoded_file`` is the Part-10 byte stream as received."""
        return self._ingest(ds, hashlib.sha256(encoded_file).hexdigest,
                            lambda rel, _sync: self.files.write_atomic(rel, (encoded_file,)),
                            lambda: None, context_sop_class=context_sop_class,
                            affected_sop_instance=affected_sop_instance,
                            transfer_syntax=transfer_syntax)

    def ingest_received(self, ds: Dataset, received: PartialFile, *, context_sop_class: str,
                        affected_sop_instance: str, transfer_syntax: str,
                        raw: bytes | bytearray | None = None) -> IngestOutcome:
        """Store one instance into ``received`` (a Part-10 file): it is placed under
        its name or discarded, never left behind. ``raw``: the file's bytes, for the
        journal record; while ``received`` is still empty they are written into it
        only after the record, while the disk writes that record (without a journal
        the file is flushed itself). Without ``raw``, ``received`` holds the file."""
        digest: list[str] = []
        written = received.size > 0 or raw is None

        def sha256() -> str:
            if written:
                return received.sha256
            if not digest:
                digest.append(hashlib.sha256(raw).hexdigest())  # type: ignore[arg-type]
            return digest[0]

        def fill() -> None:
            if not written:
                received.write(raw, sha256_hex=sha256())  # type: ignore[arg-type]

        try:
            return self._ingest(ds, sha256, lambda rel, sync: received.place(rel, sync=sync),
                                received.discard, raw=raw, fill=fill,
                                context_sop_class=context_sop_class,
                                affected_sop_instance=affected_sop_instance,
                                transfer_syntax=transfer_syntax)
        finally:
            received.discard()  # a no-op once placed

    def _ingest(self, ds: Dataset, sha256: Callable[[], str],
                place: Callable[[str, bool], tuple[int, str]], drop: Callable[[], None], *,
                context_sop_class: str, affected_sop_instance: str,
                transfer_syntax: str, raw: bytes | bytearray | None = None,
                fill: Callable[[], None] = lambda: None) -> IngestOutcome:
        self.last_received = time.monotonic()
        ts = UID(transfer_syntax)
        try:
            _cls, sop_uid, study_uid, series_uid = validate_instance(
                ds, context_sop_class=context_sop_class,
                affected_sop_instance=affected_sop_instance, transfer_syntax=ts,
                memo=self._validation_memo)
            record = record_from_dataset(ds, str(ts), self._record_memo)
            rel = self.files.relpath(study_uid, series_uid, sop_uid)
        except InvalidInstance as exc:
            return IngestOutcome(exc.status, exc.reason)
        except Exception as exc:  # a malformed value pydicom could not convert
            log.info("rejected an instance: dataset cannot be parsed (%s)", type(exc).__name__)
            return IngestOutcome(status.CANNOT_PARSE, "dataset cannot be parsed")

        journal = self.journal if raw is not None and self._checkpointer else None
        try:
            with self.ledger.claim(sop_uid) as claim:
                outcome = self._claimed(claim, journal, record, rel, series_uid, sha256,
                                        place, drop, raw, fill)
        except StoreError as exc:  # the claim itself could not be made
            drop()
            log.error("metadata database unavailable, instance not stored: %s", exc)
            return IngestOutcome(status.OUT_OF_RESOURCES, "metadata database unavailable")
        if journal is not None and self._checkpointer is not None:
            self._checkpointer.nudge()
        return outcome

    def _claimed(self, claim: Claim, journal: Journal | None, record: InstanceRecord,
                 rel: str, series_uid: str, sha256: Callable[[], str],
                 place: Callable[[str, bool], tuple[int, str]], drop: Callable[[], None],
                 raw: bytes | bytearray | None, fill: Callable[[], None]) -> IngestOutcome:
        """Journal, place and commit one claimed instance. With the journal, the record
        is written and flushed before the claim's answer is read: a receiver's claim
        travels to the main process while the disk flushes (a resent instance then
        costs a cancelled record)."""
        seq = 0
        if journal is not None:
            try:
                seq = journal.append(rel, raw, sha256())  # type: ignore[arg-type]
                fill()  # the file, written while the disk writes the record
                journal.sync(seq)  # the instance is durable from here on
            except JournalError as exc:
                log.error("%s", exc)
                if seq:
                    journal.cancel(seq)
                drop()
                return IngestOutcome(status.OUT_OF_RESOURCES, "cannot write file: storage full")
        try:
            known = claim.known()
        except StoreError as exc:
            if journal is not None:
                journal.cancel(seq)
            drop()
            log.error("metadata database unavailable, instance not stored: %s", exc)
            return IngestOutcome(status.OUT_OF_RESOURCES, "metadata database unavailable")
        if known is not None:
            # Idempotent: the stored copy stays; a differing resend is logged.
            if journal is not None:
                journal.cancel(seq)
            if sha256() != known.sha256:
                log.warning("a resent instance differs from the stored copy; "
                            "kept the stored copy")
            drop()
            return IngestOutcome(status.SUCCESS, "", None, duplicate=True)
        if journal is None:
            fill()
        try:
            size, sha = place(rel, journal is None)
        except FileStoreError as exc:
            log.error("%s", exc)
            if journal is not None:
                journal.cancel(seq)
            return IngestOutcome(status.OUT_OF_RESOURCES, "cannot write file: storage full")
        try:
            result = self.ledger.commit(
                record, StoredFile(rel, size, sha), self.source,
                [("publish", series_uid, self.series_idle_s)], relaxed=journal is not None)
        except Exception as exc:
            self.files.remove(rel)
            if journal is not None:
                journal.cancel(seq)
            log.error("metadata commit failed, instance not stored: %s",
                      type(exc).__name__ if not isinstance(exc, StoreError) else exc)
            return IngestOutcome(status.OUT_OF_RESOURCES, "metadata database unavailable")
        if journal is not None:
            journal.done(seq, rel)
        return IngestOutcome(status.SUCCESS, "", result.instance_id, result.duplicate)


def _intact(path: Path, sha256_hex: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest() == sha256_hex
    except OSError:
        return False
