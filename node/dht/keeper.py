"""Gatekeeper between the network and the record store.

Every record is checked (signature, key binding, publisher membership, expiry and TTL
bounds) when it is stored AND again when it is read — from the network or from our own
store — because a holder can lie and the roster can change after a record was stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from node.dht.membership import Membership
from node.dht.messages import StoreStatus
from node.dht.records import Record, RecordError, check_record
from node.dht.storage import PutResult, RecordStore

_STATUS = {PutResult.STORED: StoreStatus.STORED, PutResult.STALE: StoreStatus.STALE,
           PutResult.FULL: StoreStatus.FULL, PutResult.OVER_QUOTA: StoreStatus.FULL}


def newest_per_publisher(records: Iterable[Record]) -> list[Record]:
    """Merge answers from many holders: one record per publisher, the newest."""
    best: dict[bytes, Record] = {}
    for record in records:
        current = best.get(record.publisher)
        if current is None or record.issued_ms > current.issued_ms:
            best[record.publisher] = record
    return [best[p] for p in sorted(best)]


class RecordKeeper:
    def __init__(self, store: RecordStore, membership: Membership, stats: Counter[str],
                 now_ms: Callable[[], int], max_ttl_ms: int, max_skew_ms: int,
                 publisher_quota: int | None = None) -> None:
        self.store = store
        self.membership = membership
        self.stats = stats
        self.now_ms = now_ms
        self.max_ttl_ms = max_ttl_ms
        self.max_skew_ms = max_skew_ms
        self.publisher_quota = publisher_quota

    def _check(self, record: Record, key: bytes) -> str | None:
        try:
            check_record(record, key, self.now_ms(), self.max_ttl_ms, self.max_skew_ms,
                         self.membership)
        except RecordError as exc:
            self.stats[f"record_invalid_{exc.reason}"] += 1
            return exc.reason
        return None

    async def accept(self, record: Record) -> StoreStatus:
        if self._check(record, record.key) is not None:
            self.stats["store_rejected"] += 1
            return StoreStatus.REJECTED
        result = await self.store.put(record, self.publisher_quota)
        status = _STATUS[result]
        self.stats[f"store_{result.value}"] += 1
        return status

    def verified(self, records: Iterable[Record], key: bytes) -> list[Record]:
        good = []
        for record in records:
            if self._check(record, key) is None:
                good.append(record)
            else:
                self.stats["records_dropped_on_read"] += 1
        return good

    async def local(self, key: bytes) -> list[Record]:
        return self.verified(await self.store.get(key, self.now_ms()), key)

    async def served(self, key: bytes, after: bytes | None) -> list[Record]:
        """What we hand out for FIND_VALUE (readers verify again themselves)."""
        records = await self.store.get(key, self.now_ms())
        return records if after is None else [r for r in records if r.publisher > after]

    async def sweep(self) -> int:
        removed = await self.store.sweep(self.now_ms())
        self.stats["records_expired"] += removed
        return removed
