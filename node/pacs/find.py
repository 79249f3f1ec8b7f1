"""C-FIND answered from the site's store, and the instance list behind C-GET/C-MOVE.

One indexed SQL statement per request (counts are columns, ModalitiesInStudy a probe
of the study->modality table); rows are read in batches on one pooled reader and
turned into response identifiers as the caller consumes them, so a large answer never
sits in memory whole. ``find`` is an async iterator: consume it as the SCU reads.
The SCP's paths (``find_rows``, ``find_sync``) hand over each match as its row
(``ResponseRow``), encoded straight to the response bytes (``response_wire``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncIterator

from pydicom.dataset import Dataset

from ..store.db import MetadataStore
from .identifier import Identifier
from .matching import DEFAULT_LIMIT, InfoModel, build_query, build_retrieve_query
from .response_wire import ResponseRow, RowEncoder

log = logging.getLogger("medfed.find")

_BATCH = 256


@dataclass(frozen=True)
class InstanceRow:
    """One instance a retrieve names; ``path`` is None when the file is not local
    (NEARLINE: it must first be fetched from the upstream PACS)."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str | None
    size: int
    series_uid: str
    study_uid: str
    source: str = "local"   # 'synthetic' rows (medfed synth --metadata-only) have no file


async def find(store: MetadataStore, identifier: Dataset, model: InfoModel | str, *,
               retrieve_ae: str, limit: int = DEFAULT_LIMIT) -> AsyncIterator[Dataset]:
    """Response identifiers for a C-FIND request, best first by the level's natural
    order. Raises MatchError (before the first result) for a malformed identifier."""
    rows = find_rows(store, identifier, model, retrieve_ae=retrieve_ae, limit=limit)
    try:
        async for row in rows:
            yield row.dataset()
    finally:
        await rows.aclose()


async def find_rows(store: MetadataStore, identifier: Dataset, model: InfoModel | str, *,
                    retrieve_ae: str, limit: int = DEFAULT_LIMIT) -> AsyncIterator[ResponseRow]:
    """:func:`find`'s matches as rows (``ResponseRow``: bytes or Dataset on demand)."""
    query = build_query(identifier, model, limit=limit, dialect=store.dialect)
    sent = 0
    encoder = RowEncoder(query, retrieve_ae)
    rows = store.stream(query.sql, query.params, batch=_BATCH)
    try:
        async for row in rows:
            if sent == limit:
                log.warning("C-FIND at %s level matched more than %d records; the "
                            "answer was truncated (raise the query limit or narrow "
                            "the query)", query.level, limit)
                return
            sent += 1
            yield ResponseRow(query, row, retrieve_ae, encoder)
    finally:
        await rows.aclose()  # give the reader back now, not when the generator is collected


def find_sync(store: MetadataStore, identifier: Identifier, model: InfoModel | str, *,
              retrieve_ae: str, limit: int = DEFAULT_LIMIT) -> list[ResponseRow] | None:
    """:func:`find_rows` for a blocking thread (the DICOM association's own): the same
    statement and matches, read through ``store.read_sync``; None when the store
    has no blocking reader (then use :func:`find_rows`)."""
    query = build_query(identifier, model, limit=limit, dialect=store.dialect)
    rows = store.read_sync(query.sql, query.params)
    if rows is None:
        return None
    if len(rows) > limit:
        log.warning("C-FIND at %s level matched more than %d records; the answer was "
                    "truncated (raise the query limit or narrow the query)", query.level, limit)
    encoder = RowEncoder(query, retrieve_ae)
    return [ResponseRow(query, row, retrieve_ae, encoder) for row in rows[:limit]]


async def select_instances(store: MetadataStore, identifier: Dataset,
                           model: InfoModel | str) -> list[InstanceRow]:
    """The instances a C-GET/C-MOVE identifier means, in study/series/instance order.
    Raises MatchError for a malformed identifier."""
    sql, params = build_retrieve_query(identifier, model, store.dialect)
    rows = await store.fetchall(sql, params)
    return [InstanceRow(str(r[0]), str(r[1]), str(r[2]), r[3], int(r[4]), str(r[5]),
                        str(r[6]), str(r[7])) for r in rows]
