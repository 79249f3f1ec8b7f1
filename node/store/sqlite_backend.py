"""The embedded store: one SQLite file in WAL mode (the default; nothing to install).

One synchronous writer connection (used from DICOM threads and through
``asyncio.to_thread``) and a pool of aiosqlite readers, each with its own page cache.
Schema migrations run on the writer at open, each in one transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import aiosqlite

from ..datadir import create_private_file
from .dialect import SQLITE
from .pool import ReaderPool
from .schema import MIGRATIONS, SCHEMA

_READ_PRAGMAS = ("PRAGMA foreign_keys=ON", "PRAGMA busy_timeout=10000",
                 "PRAGMA temp_store=MEMORY")


def _cache_pragma(cache_mb: int) -> str:
    return f"PRAGMA cache_size=-{max(1, cache_mb) * 1024}"   # negative = KiB


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 1


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the schema to the newest version; returns the versions applied. A new
    file gets version 1 and then the same migrations an existing node runs."""
    fresh = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                         ).fetchone() is None
    if fresh:
        conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1')")
    applied = []
    for version, script in MIGRATIONS:
        if schema_version(conn) >= version:
            continue
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nUPDATE meta SET value='{version}' "
                               "WHERE key='schema_version';\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


class SqliteBackend:
    dialect = SQLITE
    begin = "BEGIN IMMEDIATE"

    def __init__(self, path: Path, *, durability: str, readers: int, cache_mb: int) -> None:
        self.path = path
        self.durability = durability
        # a commit without a WAL flush (the ingest journal holds the instance); the
        # next FULL commit flushes it too
        self.relax = (("PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL")
                      if durability == "full" else None)
        self.readers = readers
        self.cache_mb = cache_mb
        self._pool: ReaderPool[aiosqlite.Connection] | None = None

    def connect_writer(self) -> sqlite3.Connection:
        """Open the writer and migrate (blocking: call it in a thread)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite gives the WAL and shared-memory files the database file's mode, so
        # creating it 0600 keeps all three private whatever the umask.
        create_private_file(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'full' else 'NORMAL'}")
            for pragma in _READ_PRAGMAS:
                conn.execute(pragma)
            conn.execute(_cache_pragma(self.cache_mb))
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def open_readers(self) -> None:
        conns = []
        try:
            for _ in range(self.readers):
                db = await aiosqlite.connect(self.path, isolation_level=None)
                conns.append(db)
                for pragma in (*_READ_PRAGMAS, _cache_pragma(self.cache_mb)):
                    await db.execute(pragma)
        except BaseException:
            for db in conns:
                await db.close()
            raise
        self._pool = ReaderPool(conns)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for db in pool.connections:
                await db.close()

    def _readers(self) -> ReaderPool[aiosqlite.Connection]:
        if self._pool is None:
            raise RuntimeError("metadata database is not open")
        return self._pool

    async def fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        async with self._readers().acquire() as db:
            async with db.execute(sql, params) as cur:
                return list(await cur.fetchall())

    async def stream(self, sql: str, params: Sequence[Any], batch: int) -> AsyncIterator[Any]:
        async with self._readers().acquire() as db:
            async with db.execute(sql, params) as cur:
                while rows := await cur.fetchmany(batch):
                    for row in rows:
                        yield row

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += Path(f"{self.path}{suffix}").stat().st_size
            except OSError:
                pass
        return total
