"""Ingest of one received instance: validate, write the file, commit the rows.

Runs in the DICOM association's thread: the file write and the metadata commit (on the
store's writer connection) happen right here, in parallel across associations up to
the commit lock. The success status is returned only after both the file and the rows
are durable, so an acknowledged C-STORE survives kill -9.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import zlib
from dataclasses import dataclass
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..store.db import MetadataStore, StoredFile, StoreError
from ..store.files import FileStoreError, ObjectFiles, PartialFile
from ..store.records import record_from_dataset
from . import status
from .validate import InvalidInstance, validate_instance

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
    def __init__(self, store: MetadataStore, files: ObjectFiles, *,
                 series_idle_s: float = 30.0, source: str = "local") -> None:
        self.store = store
        self.files = files
        self.series_idle_s = series_idle_s
        self.source = source
        self._stripes = [threading.Lock() for _ in range(64)]

    def ingest(self, ds: Dataset, encoded_file: bytes, *, context_sop_class: str,
               affected_sop_instance: str, transfer_syntax: str) -> IngestOutcome:
        """Store one instance; ``encoded_file`` is the Part-10 byte stream as received."""
        return self._ingest(ds, hashlib.sha256(encoded_file).hexdigest,
                            lambda rel: self.files.write_atomic(rel, (encoded_file,)),
                            lambda: None, context_sop_class=context_sop_class,
                            affected_sop_instance=affected_sop_instance,
                            transfer_syntax=transfer_syntax)

    def ingest_received(self, ds: Dataset, received: PartialFile, *, context_sop_class: str,
                        affected_sop_instance: str, transfer_syntax: str) -> IngestOutcome:
        """Store one instance already streamed into ``received`` (a Part-10 file): it is
        placed under its name or discarded, never left behind."""
        try:
            return self._ingest(ds, lambda: received.sha256, received.place, received.discard,
                                context_sop_class=context_sop_class,
                                affected_sop_instance=affected_sop_instance,
                                transfer_syntax=transfer_syntax)
        finally:
            received.discard()  # a no-op once placed

    def _ingest(self, ds: Dataset, sha256: Callable[[], str],
                place: Callable[[str], tuple[int, str]], drop: Callable[[], None], *,
                context_sop_class: str, affected_sop_instance: str,
                transfer_syntax: str) -> IngestOutcome:
        ts = UID(transfer_syntax)
        try:
            _cls, sop_uid, study_uid, series_uid = validate_instance(
                ds, context_sop_class=context_sop_class,
                affected_sop_instance=affected_sop_instance, transfer_syntax=ts)
            record = record_from_dataset(ds, str(ts))
            rel = self.files.relpath(study_uid, series_uid, sop_uid)
        except InvalidInstance as exc:
            return IngestOutcome(exc.status, exc.reason)
        except Exception as exc:  # a malformed value pydicom could not convert
            log.info("rejected an instance: dataset cannot be parsed (%s)", type(exc).__name__)
            return IngestOutcome(status.CANNOT_PARSE, "dataset cannot be parsed")

        with self._stripes[zlib.crc32(sop_uid.encode()) % len(self._stripes)]:
            known = self.store.instance_file_sync(sop_uid)
            if known is not None:
                # Idempotent: the stored copy stays; a differing resend is logged.
                if sha256() != known.sha256:
                    log.warning("a resent instance differs from the stored copy; "
                                "kept the stored copy")
                drop()
                return IngestOutcome(status.SUCCESS, "", None, duplicate=True)
            try:
                size, sha = place(rel)
            except FileStoreError as exc:
                log.error("%s", exc)
                return IngestOutcome(status.OUT_OF_RESOURCES, "cannot write file: storage full")
            try:
                result = self.store.ingest_sync(
                    record, StoredFile(rel, size, sha), self.source,
                    jobs=[("publish", series_uid, self.series_idle_s)])
            except Exception as exc:
                self.files.remove(rel)
                log.error("metadata commit failed, instance not stored: %s",
                          type(exc).__name__ if not isinstance(exc, StoreError) else exc)
                return IngestOutcome(status.OUT_OF_RESOURCES, "metadata database unavailable")
        return IngestOutcome(status.SUCCESS, "", result.instance_id, result.duplicate)
