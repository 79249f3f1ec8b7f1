"""Another site's series behind a WADO-RS URL: find its owner, fetch, decrypt into memory.

The owner (or, for de-identified data, replicas + k key shares) sends the bundle through
``node.sharing.retrieve.Retriever``, which applies the owner's policy to this user's
assertion and audits; the bytes are decrypted into the bounded ``SeriesCache``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from node.pacs.qr_attributes import QueryLevel
from node.query.model import MAX_LIMIT, FederatedQuery
from node.query.service import FederatedQueryError
from node.sharing.retrieve import FetchError, FetchRefused, Retriever, SeriesRef, local_assertion

from .errors import NotFound, Refused, Unavailable
from .instances import InstanceView
from .memory_cache import MemorySink, SeriesCache
from .qido_federated import query_service, rows_as_json
from .remote_index import RemoteIndex, RemoteSeries
from .requester import Requester

FETCH_DEADLINE_S = 120.0
PARALLEL_SERIES = 3


class RemoteSeriesSource:
    def __init__(self, node: Any, cache: SeriesCache, index: RemoteIndex) -> None:
        self.node = node
        self.cache = cache
        self.index = index

    async def _lookup(self, who: Requester, study_uid: str,
                      series_uid: str | None) -> list[RemoteSeries]:
        service = query_service(self.node)
        if service is None:
            return []
        try:
            answer = await service.query(FederatedQuery(level="series", limit=MAX_LIMIT),
                                         user=who.user, purpose=who.purpose)
        except FederatedQueryError:
            return []
        me = self.node.identity.node_id_hex
        filters = {"StudyInstanceUID": study_uid}
        if series_uid:
            filters["SeriesInstanceUID"] = series_uid
        rows_as_json([a for a in answer.answers if a.site.node_id != me], QueryLevel.SERIES,
                     filters, self.index)
        return self._known(study_uid, series_uid)

    def _known(self, study_uid: str, series_uid: str | None) -> list[RemoteSeries]:
        if series_uid:
            entry = self.index.series(series_uid)
            return [entry] if entry is not None and entry.study_uid == study_uid else []
        return self.index.of_study(study_uid)

    async def series_of(self, who: Requester, study_uid: str,
                        series_uid: str | None) -> list[RemoteSeries]:
        """The remote series the URL names (known from a QIDO answer, else asked for)."""
        found = self._known(study_uid, series_uid)
        if not found or series_uid is None:
            found = await self._lookup(who, study_uid, series_uid)
        if not found:
            raise NotFound("no such study or series here or at any site that answered")
        return found

    async def instances(self, who: Requester, study_uid: str, series_uid: str | None
                        ) -> list[InstanceView]:
        entries = await self.series_of(who, study_uid, series_uid)
        gate = asyncio.Semaphore(PARALLEL_SERIES)

        async def one(entry: RemoteSeries) -> list[InstanceView]:
            async with gate:
                return await self._fetch(who, entry)

        results = await asyncio.gather(*(one(e) for e in entries))
        return [v for views in results for v in views]

    async def _fetch(self, who: Requester, entry: RemoteSeries) -> list[InstanceView]:
        target = entry.target
        key = (who.cache_key, target.owner, target.keyed_series_uid, target.identified)

        async def fetch() -> list[bytes]:
            assertion = local_assertion(self.node, who.user, who.purpose)
            try:
                result = await Retriever(self.node, deadline_s=FETCH_DEADLINE_S).fetch(
                    SeriesRef(target.owner, keyed_series_uid=target.keyed_series_uid),
                    assertion, lambda _bundle: MemorySink(self.cache.max_bytes),
                    identified=target.identified)
            except FetchRefused as exc:
                raise Refused(str(exc)) from None
            except FetchError as exc:
                raise Unavailable(f"the series could not be fetched from its site: {exc}") from None
            return list(result.outputs)

        return await self.cache.get(key, fetch)
