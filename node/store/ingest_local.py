"""Put a dataset into a node's store without DICOM networking (simulator, tests, imports).

Same order and guarantees as a C-STORE: validate, write the Part-10 file atomically,
then commit rows and the publish job in one transaction; on a failed commit the file is
removed, so nothing is half-written.
"""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import UID

from .db import IngestResult, MetadataStore, StoredFile
from .files import ObjectFiles
from .records import record_from_dataset
from ..pacs.validate import InvalidInstance, validate_instance


class LocalIngestError(ValueError):
    """The dataset cannot be stored; the message says what is wrong with it."""


def encode_part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


async def ingest_dataset(store: MetadataStore, files: ObjectFiles, ds: Dataset, *,
                         source: str = "local", publish_delay_s: float = 0.0) -> IngestResult:
    """Store one instance (with its file) and queue its series for publishing."""
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(getattr(meta, "TransferSyntaxUID", "") or ""))
    try:
        _cls, sop_uid, study_uid, series_uid = validate_instance(
            ds, context_sop_class=str(ds.get("SOPClassUID", "")),
            affected_sop_instance=str(ds.get("SOPInstanceUID", "")), transfer_syntax=ts)
    except InvalidInstance as exc:
        raise LocalIngestError(f"instance refused: {exc.reason}") from exc
    record = record_from_dataset(ds, str(ts))
    rel = files.relpath(study_uid, series_uid, sop_uid)
    size, sha = files.write_atomic(rel, (encode_part10(ds),))
    try:
        return await store.ingest(record, StoredFile(rel, size, sha), source,
                                  jobs=[("publish", series_uid, publish_delay_s)])
    except BaseException:
        files.remove(rel)
        raise
