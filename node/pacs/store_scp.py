"""C-STORE as an SCP: the data set streams from the socket straight into a partial
file (Part-10 header first), then the ingestor validates, places and commits it.

pynetdicom collects the whole data set in memory, decodes it, and its default logging
copies it once more with ``getvalue()`` (103.6 -> 114 inst/s without that copy, issue
15); here each fragment is written as it arrives and the bytes are read back once to
parse the attributes the store needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pynetdicom.presentation import PresentationContext

from ..store.files import FileStoreError, ObjectFiles, PartialFile
from . import codec, dimse, status
from .association import Association
from .backend import Auditor
from .ingest import IngestOutcome, Ingestor

log = logging.getLogger("medfed.dicom")


class StoreSink:
    """The data set of one C-STORE-RQ on its way into a partial file."""

    def __init__(self, files: ObjectFiles | None, header: bytes = b"") -> None:
        self.header_size = len(header)
        self.partial: PartialFile | None = None
        self.error, self.error_status = "", status.OUT_OF_RESOURCES
        if files is None:
            self.error, self.error_status = "command set values unusable", status.CANNOT_PARSE
            return
        try:
            self.partial = files.begin()
            self.partial.write(header)
        except FileStoreError as exc:
            log.error("%s", exc)
            self.error = "cannot write file: storage full"

    def write(self, chunk: bytes | bytearray) -> None:
        if self.partial is not None:
            self.partial.write(chunk)

    def abandon(self) -> None:
        if self.partial is not None:
            self.partial.discard()


@dataclass
class StoreHandler:
    """Answers C-STORE-RQs of every association of one service."""

    files: ObjectFiles
    ingestor: Ingestor
    audit: Auditor

    def sink(self, assoc: Association, context: PresentationContext,
             command: dimse.Command) -> StoreSink:
        try:
            header = codec.part10_header(
                str(command.get("AffectedSOPClassUID", context.abstract_syntax)),
                str(command.get("AffectedSOPInstanceUID", "")),
                str(context.transfer_syntax[0]), assoc.calling_ae)
        except Exception:  # values pydicom refuses to write: answered, not stored
            return StoreSink(None)
        return StoreSink(self.files, header)

    def handle(self, assoc: Association, context: PresentationContext,
               command: dimse.Command, sink: StoreSink) -> None:
        outcome = self._ingest(context, command, sink)
        calling = assoc.calling_ae
        if outcome.status == status.SUCCESS:
            self.audit.append("dicom.store", calling, "duplicate" if outcome.duplicate else "ok",
                              subject=f"instance:{outcome.instance_id}"
                              if outcome.instance_id else "")
        else:
            log.info("C-STORE from %s refused: 0x%04X %s", calling, outcome.status,
                     outcome.reason)
            self.audit.append("dicom.store", calling, "failed",
                              status=f"0x{outcome.status:04X}", reason=outcome.reason)
        rsp = dimse.response(command, dimse.C_STORE_RSP, outcome.status,
                             AffectedSOPInstanceUID=command.get("AffectedSOPInstanceUID"),
                             ErrorComment=outcome.reason[:64] or None)
        assoc.send(int(context.context_id), rsp)

    def _ingest(self, context: PresentationContext, command: dimse.Command,
                sink: StoreSink) -> IngestOutcome:
        partial = sink.partial
        if partial is None or sink.error:
            sink.abandon()
            return IngestOutcome(sink.error_status, sink.error)
        if partial.error is not None:
            log.error("cannot write image file under %s: %s", self.files.root,
                      partial.error.strerror or partial.error)
            partial.discard()
            return IngestOutcome(status.OUT_OF_RESOURCES, "cannot write file: storage full")
        ts = str(context.transfer_syntax[0])
        try:
            with open(partial.path, "rb") as fh:
                fh.seek(sink.header_size)
                ds = codec.decode(fh.read(), ts)
        except Exception as exc:
            partial.discard()
            log.info("C-STORE: undecodable dataset (%s)", type(exc).__name__)
            return IngestOutcome(status.CANNOT_PARSE, "dataset cannot be parsed")
        return self.ingestor.ingest_received(
            ds, partial, context_sop_class=str(context.abstract_syntax),
            affected_sop_instance=str(command.get("AffectedSOPInstanceUID", "")),
            transfer_syntax=ts)
