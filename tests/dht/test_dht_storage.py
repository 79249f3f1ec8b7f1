"""Record stores (in-memory and SQLite, same contract): many publishers per key,
newest record per publisher wins, expiry, capacity bound, SQLite survives reopen."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import pytest

from node.dht.records import sign_record
from node.dht.storage import MemoryRecordStore, PutResult
from node.dht.storage_sqlite import SQLiteRecordStore, SQLiteStoreError
from node.identity import NodeIdentity

KEY = os.urandom(32)
PUBS = [NodeIdentity.generate() for _ in range(3)]


def rec(pub: NodeIdentity, issued: int, life_ms: int = 60_000, key: bytes = KEY, count: int = 1):
    return sign_record(pub, key, count, issued, issued + life_ms)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path) -> AsyncIterator:
    if request.param == "memory":
        yield MemoryRecordStore(capacity=4)
    else:
        db = await SQLiteRecordStore.open(tmp_path / "dht.sqlite", capacity=4)
        yield db
        await db.close()


async def test_many_publishers_newest_wins(store) -> None:
    t = int(time.time() * 1000)
    assert await store.put(rec(PUBS[0], t, count=1)) is PutResult.STORED
    assert await store.put(rec(PUBS[1], t, count=2)) is PutResult.STORED
    assert await store.put(rec(PUBS[0], t + 5, count=3)) is PutResult.STORED
    assert await store.put(rec(PUBS[0], t + 1, count=9)) is PutResult.STALE
    assert await store.put(rec(PUBS[0], t + 5, count=9)) is PutResult.STALE
    got = await store.get(KEY, t)
    assert sorted(r.count for r in got) == [2, 3]
    assert [r.publisher for r in got] == sorted(r.publisher for r in got)
    assert await store.count() == 2


async def test_expired_records_are_hidden_then_swept(store) -> None:
    t = int(time.time() * 1000)
    await store.put(rec(PUBS[0], t, life_ms=100))
    await store.put(rec(PUBS[1], t, life_ms=10_000))
    assert len(await store.get(KEY, t + 50)) == 2
    assert [r.publisher for r in await store.get(KEY, t + 100)] == [PUBS[1].node_id]
    assert await store.sweep(t + 100) == 1
    assert await store.count() == 1


async def test_capacity_bound_refuses_new_but_allows_updates(store) -> None:
    t = int(time.time() * 1000)
    for _ in range(4):
        assert await store.put(rec(PUBS[0], t, key=os.urandom(32))) is PutResult.STORED
    assert await store.put(rec(PUBS[1], t)) is PutResult.FULL
    assert await store.count() == 4
    assert await store.get(KEY, t) == []


async def test_sqlite_store_survives_reopen(tmp_path) -> None:
    path = tmp_path / "dht.sqlite"
    t = int(time.time() * 1000)
    db = await SQLiteRecordStore.open(path)
    await db.put(rec(PUBS[2], t, count=5))
    await db.close()
    db = await SQLiteRecordStore.open(path)
    try:
        assert [r.count for r in await db.get(KEY, t)] == [5]
    finally:
        await db.close()


async def test_sqlite_store_bad_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SQLiteStoreError, match="cannot open DHT record database"):
        await SQLiteRecordStore.open(tmp_path / "missing-dir" / "dht.sqlite")


async def test_sqlite_store_corrupt_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "dht.sqlite"
    path.write_bytes(b"this is not a database " * 200)
    with pytest.raises(SQLiteStoreError, match="not a database"):
        await SQLiteRecordStore.open(path)


async def test_sweeps_skip_until_the_earliest_expiry_and_still_remove_everything_due(store) -> None:
    t = int(time.time() * 1000)
    await store.put(rec(PUBS[0], t, life_ms=1_000))
    await store.put(rec(PUBS[1], t, life_ms=5_000))
    await store.put(rec(PUBS[0], t + 1, life_ms=3_000))   # replaces the one due at t+1000
    assert await store.sweep(t + 999) == 0
    assert await store.sweep(t + 1_500) == 0              # the replaced record is gone already
    assert await store.count() == 2
    assert await store.sweep(t + 3_001) == 1              # the bound was recomputed
    assert [r.publisher for r in await store.get(KEY, t + 3_001)] == [PUBS[1].node_id]
    await store.put(rec(PUBS[2], t, life_ms=4_000))       # due before the one left
    assert await store.sweep(t + 4_000) == 1
    assert await store.sweep(t + 5_000) == 1
    assert await store.count() == 0
