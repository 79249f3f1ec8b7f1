"""SQLite record store (aiosqlite), for a node that should keep what it holds across
restarts. Same semantics as the in-memory store; the newest-wins rule is one UPSERT so
a crash can never leave two records for one (key, publisher).
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from node.dht.codec import DecodeError
from node.dht.records import Record, decode_record, encode_record
from node.dht.storage import PutResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dht_records (
    key BLOB NOT NULL,
    publisher BLOB NOT NULL,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (key, publisher)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dht_records_expiry ON dht_records (expires_ms);
CREATE INDEX IF NOT EXISTS dht_records_publisher ON dht_records (publisher);
"""


class SQLiteStoreError(Exception):
    """The DHT record database cannot be opened or used."""


class SQLiteRecordStore:
    def __init__(self, db: aiosqlite.Connection, capacity: int) -> None:
        self._db = db
        self.capacity = capacity

    @classmethod
    async def open(cls, path: Path, capacity: int = 100_000) -> SQLiteRecordStore:
        if not path.parent.is_dir():
            raise SQLiteStoreError(f"cannot open DHT record database {path}: folder "
                                   f"{path.parent} does not exist; create it first.")
        db: aiosqlite.Connection | None = None
        try:
            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.executescript(_SCHEMA)
            await db.commit()
        except aiosqlite.Error as exc:
            if db is not None:
                await db.close()
            raise SQLiteStoreError(
                f"cannot open DHT record database {path}: {exc}. Check the path is "
                "writable; the file may be deleted (records are republished).") from exc
        return cls(db, capacity)

    async def close(self) -> None:
        await self._db.close()

    async def put(self, record: Record, publisher_quota: int | None = None) -> PutResult:
        async with self._db.execute(
                "SELECT issued_ms FROM dht_records WHERE key=? AND publisher=?",
                (record.key, record.publisher)) as cur:
            row = await cur.fetchone()
        if row is not None and row[0] >= record.issued_ms:
            return PutResult.STALE
        if row is None and await self.count() >= self.capacity:
            return PutResult.FULL
        if row is None and publisher_quota is not None:
            async with self._db.execute("SELECT COUNT(*) FROM dht_records WHERE publisher=?",
                                        (record.publisher,)) as cur:
                held = await cur.fetchone()
            if held is not None and int(held[0]) >= publisher_quota:
                return PutResult.OVER_QUOTA
        await self._db.execute(
            "INSERT INTO dht_records (key, publisher, issued_ms, expires_ms, record) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key, publisher) DO UPDATE SET "
            "issued_ms=excluded.issued_ms, expires_ms=excluded.expires_ms, "
            "record=excluded.record WHERE excluded.issued_ms > dht_records.issued_ms",
            (record.key, record.publisher, record.issued_ms, record.expires_ms,
             encode_record(record)))
        await self._db.commit()
        return PutResult.STORED

    async def get(self, key: bytes, now_ms: int) -> list[Record]:
        async with self._db.execute(
                "SELECT record FROM dht_records WHERE key=? AND expires_ms>? "
                "ORDER BY publisher", (key, now_ms)) as cur:
            rows = await cur.fetchall()
        records = []
        for (blob,) in rows:
            try:
                records.append(decode_record(bytes(blob), key))
            except DecodeError:
                continue  # a damaged row is skipped; the publisher will republish
        return records

    async def sweep(self, now_ms: int) -> int:
        cur = await self._db.execute("DELETE FROM dht_records WHERE expires_ms<=?", (now_ms,))
        await self._db.commit()
        return cur.rowcount

    async def count(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM dht_records") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
