"""The query backend that answers from this site's own SQLite (C-FIND / C-GET / C-MOVE)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from ..pacs.find import find, select_instances
from ..pacs.matching import MatchError
from ..pacs.scp import QueryRefused, RetrieveItem
from ..store.db import MetadataStore
from ..store.files import ObjectFiles


class LocalBackend:
    def __init__(self, store: MetadataStore, files: ObjectFiles, ae_title: str,
                 *, limit: int = 10000) -> None:
        self.store = store
        self.files = files
        self.ae_title = ae_title
        self.limit = limit

    async def find(self, identifier: Dataset, model: str, *, called_ae: str,
                   calling_ae: str) -> list[Dataset]:
        try:
            return [ds async for ds in find(self.store, identifier, model,
                                            retrieve_ae=self.ae_title, limit=self.limit)]
        except MatchError as exc:
            raise QueryRefused(exc.reason, exc.status) from exc

    async def select(self, identifier: Dataset, model: str) -> list[RetrieveItem]:
        try:
            rows = await select_instances(self.store, identifier, model)
        except MatchError as exc:
            raise QueryRefused(exc.reason, exc.status) from exc
        return [RetrieveItem(self.files.path(r.path), r.sop_class_uid, r.transfer_syntax)
                for r in rows if r.path]
