"""Put a dataset into a node's store without DICOM networking (simulator, tests, imports).

It goes through the same ``Ingestor`` as a C-STORE (validation, atomic file, one
transaction with the publish job, idempotent resends); a refusal becomes an exception
instead of a DICOM status.
"""

from __future__ import annotations

import asyncio
from io import BytesIO

from pydicom.dataset import Dataset

from ..pacs import status
from ..pacs.ingest import IngestOutcome, Ingestor
from .db import MetadataStore
from .files import ObjectFiles


class LocalIngestError(ValueError):
    """The dataset cannot be stored; the message says what is wrong with it."""


def encode_part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


async def ingest_dataset(store: MetadataStore, files: ObjectFiles, ds: Dataset, *,
                         source: str = "local", publish_delay_s: float = 0.0) -> IngestOutcome:
    """Store one instance (with its file) and queue its series for publishing."""
    meta = getattr(ds, "file_meta", None)
    try:
        encoded = encode_part10(ds)
    except Exception as exc:  # pydicom cannot write it as a Part-10 file
        raise LocalIngestError(f"instance refused: cannot be encoded ({type(exc).__name__})") from exc
    ingestor = Ingestor(store, files, series_idle_s=publish_delay_s, source=source)
    outcome = await asyncio.to_thread(
        ingestor.ingest, ds, encoded, context_sop_class=str(ds.get("SOPClassUID", "")),
        affected_sop_instance=str(ds.get("SOPInstanceUID", "")),
        transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or ""))
    if outcome.status != status.SUCCESS:
        raise LocalIngestError(f"instance refused: {outcome.reason}")
    return outcome
