"""Storage seam for records a node holds for others: an async interface + in-memory.

Upstream kademlia's storage is a synchronous dict keyed by key with ONE value, so a
second publisher overwrote the first and a disk-backed store would block the event
loop. Here a key holds one record per publisher, the newest (by ``issued_ms``) wins,
expired records are never returned, and capacity is bounded — in total and per
publisher, so one member (compromised, or buggy) cannot fill a node's store and crowd
out everyone else's index entries. Stores do not verify
signatures — the server does that before ``put`` and the reader again after reading.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import Protocol

from node.dht.records import Record


class PutResult(Enum):
    STORED = "stored"
    STALE = "stale"      # the store already holds this publisher's record, same or newer
    FULL = "full"        # capacity reached; a new (key, publisher) is refused
    OVER_QUOTA = "over_quota"   # this publisher already holds its share of the store


class RecordStore(Protocol):
    async def put(self, record: Record, publisher_quota: int | None = None) -> PutResult:
        """Store the newest record per (key, publisher); a NEW (key, publisher) is refused
        when the store is full or its publisher already holds ``publisher_quota``."""
        ...

    async def get(self, key: bytes, now_ms: int) -> list[Record]:
        """Unexpired records under ``key``, ordered by publisher id."""
        ...

    async def sweep(self, now_ms: int) -> int:
        """Delete expired records; returns how many were removed."""
        ...

    async def count(self) -> int: ...


class MemoryRecordStore:
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._data: dict[bytes, dict[bytes, Record]] = {}
        self._size = 0
        self._per_publisher: Counter[bytes] = Counter()
        # no record held expires before this (a lower bound: a record replaced by a newer
        # one may have set it): a sweep before then has nothing to remove and returns at
        # once. Every node sweeps every maintenance tick (30 s) while republished records
        # are replaced long before they expire: 1,000 simulated nodes made 12 million
        # expiry checks an hour that found nothing.
        self._no_expiry_before = 0

    async def put(self, record: Record, publisher_quota: int | None = None) -> PutResult:
        slot = self._data.setdefault(record.key, {})
        old = slot.get(record.publisher)
        if old is not None and old.issued_ms >= record.issued_ms:
            return PutResult.STALE
        if old is None:
            if self._size >= self.capacity:
                if not slot:
                    del self._data[record.key]
                return PutResult.FULL
            if publisher_quota is not None and (
                    self._per_publisher[record.publisher] >= publisher_quota):
                if not slot:
                    del self._data[record.key]
                return PutResult.OVER_QUOTA
            self._size += 1
            self._per_publisher[record.publisher] += 1
        slot[record.publisher] = record
        if self._size == 1:                         # the only record
            self._no_expiry_before = record.expires_ms
        else:
            self._no_expiry_before = min(self._no_expiry_before, record.expires_ms)
        return PutResult.STORED

    async def get(self, key: bytes, now_ms: int) -> list[Record]:
        slot = self._data.get(key, {})
        return [slot[p] for p in sorted(slot) if not slot[p].is_expired(now_ms)]

    async def sweep(self, now_ms: int) -> int:
        if now_ms < self._no_expiry_before:
            return 0
        removed, earliest = 0, None
        for key in list(self._data):
            slot = self._data[key]
            for record in slot.values():
                if not record.is_expired(now_ms) and (earliest is None
                                                      or record.expires_ms < earliest):
                    earliest = record.expires_ms
            for publisher in [p for p, r in slot.items() if r.is_expired(now_ms)]:
                del slot[publisher]
                self._per_publisher[publisher] -= 1
                if not self._per_publisher[publisher]:
                    del self._per_publisher[publisher]
                removed += 1
            if not slot:
                del self._data[key]
        self._size -= removed
        self._no_expiry_before = earliest if earliest is not None else 0
        return removed

    async def count(self) -> int:
        return self._size
