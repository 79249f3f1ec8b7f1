"""The query backend that answers from this site's own store (C-FIND / C-GET / C-MOVE).

Instances known only from an upstream PACS (synced metadata, no file yet) are fetched
into the scratch cache before they are served, and pinned there until the transfer
ends so the cache bound never evicts something being sent.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, AsyncIterator

from pydicom.dataset import Dataset

from ..pacs.fast_identifier import FastIdentifier

from ..pacs.find import find_rows, find_sync, select_instances
from ..pacs.matching import MatchError
from ..pacs.response_wire import ResponseRow
from ..pacs.scp import QueryRefused, RetrieveItem
from ..pacs.status import QR_SUBOPS_OUT_OF_RESOURCES, UNABLE_TO_PROCESS
from ..store.db import MetadataStore
from ..store.files import ObjectFiles

if TYPE_CHECKING:
    from ..pacs.upstream import UpstreamService


class LocalBackend:
    def __init__(self, store: MetadataStore, files: ObjectFiles, ae_title: str,
                 *, limit: int = 10000) -> None:
        self.store = store
        self.files = files
        self.ae_title = ae_title
        self.limit = limit
        self.upstream: UpstreamService | None = None
        self._pins: dict[int, object] = {}
        self._lock = threading.Lock()

    async def find(self, identifier: Dataset, model: str, *, called_ae: str,
                   calling_ae: str) -> list[ResponseRow]:
        """The whole answer as a list of matches (``ResponseRow``: the SCP encodes each
        straight to bytes, ``.dataset()`` gives a Dataset); prefer find_stream."""
        return [ds async for ds in self.find_stream(identifier, model, called_ae=called_ae,
                                                    calling_ae=calling_ae)]

    async def find_stream(self, identifier: Dataset, model: str, *, called_ae: str,
                          calling_ae: str) -> AsyncIterator[ResponseRow]:
        """Matches one at a time, read from the store as they are consumed.
        Raises QueryRefused (before the first result) for a malformed identifier."""
        results = find_rows(self.store, identifier, model, retrieve_ae=self.ae_title,
                       limit=self.limit)
        try:
            async for ds in results:
                yield ds
        except MatchError as exc:
            raise QueryRefused(exc.reason, exc.status) from exc
        finally:
            await results.aclose()

    def find_sync(self, identifier: "Dataset | FastIdentifier", model: str, *, called_ae: str,
                  calling_ae: str) -> list[ResponseRow] | None:
        """The same answer as :meth:`find`, from the calling (DICOM) thread (None: the
        store cannot read blocking, await :meth:`find`)."""
        try:
            return find_sync(self.store, identifier, model, retrieve_ae=self.ae_title,
                             limit=self.limit)
        except MatchError as exc:
            raise QueryRefused(exc.reason, exc.status) from exc

    async def select(self, identifier: Dataset, model: str, **_: str) -> list[RetrieveItem]:
        from ..pacs.upstream import UpstreamError, resolve_for_serving

        try:
            rows = await select_instances(self.store, identifier, model)
        except MatchError as exc:
            raise QueryRefused(exc.reason, exc.status) from exc
        if any(r.source == "synthetic" for r in rows):
            raise QueryRefused("synthetic metadata only: no pixel data to send",
                               UNABLE_TO_PROCESS)
        try:
            serving = await resolve_for_serving(self.upstream, self.files, rows)
        except UpstreamError as exc:
            raise QueryRefused(f"upstream PACS unavailable: {exc}"[:64],
                               QR_SUBOPS_OUT_OF_RESOURCES) from exc
        missing = set(serving.missing)
        present = [r for r in rows if r.sop_uid not in missing]
        items = [RetrieveItem(path, r.sop_class_uid, r.transfer_syntax)
                 for r, path in zip(present, serving.paths)]
        if serving.pin is not None:
            with self._lock:
                self._pins[id(items)] = serving.pin
        return items

    def release(self, items: list[RetrieveItem]) -> None:
        """The transfer of ``items`` ended: unpin them in the cache (any thread)."""
        with self._lock:
            pin = self._pins.pop(id(items), None)
        if pin is not None:
            pin.release()  # type: ignore[attr-defined]
