"""One small SQLite file per concern (custody, splits, replica placements), opened alike.

Why separate files from the metadata store: these tables hold sealed key material and
placement state of the sharing layer; keeping them apart lets a site back up, wipe or
inspect them without touching patient metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import aiosqlite


class LedgerError(Exception):
    """A sharing-layer database cannot be opened (locked, corrupt, disk full)."""


async def open_db(path: Path, schema: str) -> aiosqlite.Connection:
    """WAL, full sync, autocommit; every write is one statement or an explicit transaction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db: aiosqlite.Connection | None = None
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=10000")
        await db.executescript(schema)
    except Exception as exc:
        if db is not None:
            await db.close()
        raise LedgerError(f"cannot open {path}: {exc}") from exc
    return db


class SqliteFile:
    """A sharing-layer database: subclasses set ``SCHEMA`` and use ``self.db``."""

    SCHEMA = ""
    WHAT = "database"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> Self:
        self._db = await open_db(self.path, self.SCHEMA)
        return self

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.WHAT} {self.path} is not open")
        return self._db
