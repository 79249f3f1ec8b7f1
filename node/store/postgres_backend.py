"""The store for large sites: PostgreSQL through psycopg 3 (``[store] url``).

Same shape as the SQLite backend: one synchronous writer connection (DICOM threads
commit on it directly) and a pool of async reader connections. The store's SQL is
written with ``?`` placeholders; ``pg_sql`` turns them into psycopg's ``%s``.
Migrations run at open in one transaction under an advisory lock, so several node
processes in front of one database can start at the same time.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, AsyncIterator, Sequence
from urllib.parse import urlsplit

import psycopg

from .dialect import POSTGRES
from .pool import ReaderPool
from .schema_postgres import BASE, MIGRATIONS

_MIGRATION_LOCK = 0x6D656466   # "medf": one node process migrates at a time

# Every session: no JIT compilation. The store's statements are indexed lookups that
# run in milliseconds; JIT starts above a plan *cost*, and a cost inflated by missing
# statistics (tables not yet analyzed after a large ingest) made a 2-row pseudonym
# query at 10^6 instances spend ~22 of its 32 ms compiling (issue 12).
SESSION_SETUP = "SET jit = off"


@lru_cache(maxsize=1024)
def pg_sql(sql: str, with_params: bool = True) -> str:
    """``?`` placeholders -> ``%s`` (and a literal ``%`` -> ``%%``), outside quotes."""
    if not with_params:
        return sql
    out = []
    for i, part in enumerate(re.split(r"('(?:[^']|'')*')", sql)):
        if i % 2:          # a quoted literal: only % needs escaping
            out.append(part.replace("%", "%%"))
        else:
            out.append(part.replace("%", "%%").replace("?", "%s"))
    return "".join(out)


class _Cursor:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description is not None else None

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall() if self._cur.description is not None else []


class PgConnection:
    """A psycopg connection that takes the store's ``?`` SQL (the writer's view)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> _Cursor:
        args = tuple(params) if params else None
        return _Cursor(self._conn.execute(pg_sql(sql, args is not None), args))  # type: ignore[arg-type]

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
                  ) -> None:
        """Many rows in one COPY (one statement: statement-level triggers fire once)."""
        with self._conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def close(self) -> None:
        self._conn.close()


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Create or upgrade the schema in one transaction; returns the versions applied."""
    applied = []
    with conn.transaction():
        conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        fresh = conn.execute("SELECT to_regclass('meta') IS NULL").fetchone()[0]  # type: ignore[index]
        if fresh:
            conn.execute(BASE)  # type: ignore[arg-type]
            conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 1
        for number, script in MIGRATIONS:
            if version >= number:
                continue
            conn.execute(script)  # type: ignore[arg-type]
            conn.execute("UPDATE meta SET value=%s WHERE key='schema_version'", (str(number),))
            version = number
            applied.append(number)
    return applied


class PostgresBackend:
    dialect = POSTGRES
    begin = "BEGIN"

    def __init__(self, url: str, *, readers: int) -> None:
        self.url = url
        self.readers = readers
        self._pool: ReaderPool[psycopg.AsyncConnection[Any]] | None = None

    @property
    def where(self) -> str:
        """The database named without credentials, for messages."""
        parts = urlsplit(self.url)
        host = parts.hostname or "local socket"
        return f"postgresql://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    def connect_writer(self) -> PgConnection:
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        try:
            conn.execute(SESSION_SETUP)
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return PgConnection(conn)

    async def open_readers(self) -> None:
        conns = []
        try:
            for _ in range(self.readers):
                conns.append(await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=10))
                await conns[-1].execute(SESSION_SETUP)
        except BaseException:
            for conn in conns:
                await conn.close()
            raise
        self._pool = ReaderPool(conns)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for conn in pool.connections:
                await conn.close()

    def _readers(self) -> ReaderPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise RuntimeError("metadata database is not open")
        return self._pool

    async def fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        args = tuple(params) if params else None
        async with self._readers().acquire() as conn:
            cur = await conn.execute(pg_sql(sql, args is not None), args)  # type: ignore[arg-type]
            return await cur.fetchall() if cur.description is not None else []

    async def stream(self, sql: str, params: Sequence[Any], batch: int) -> AsyncIterator[Any]:
        args = tuple(params) if params else None
        async with self._readers().acquire() as conn:
            async with conn.cursor() as cur:
                async for row in cur.stream(pg_sql(sql, args is not None), args,  # type: ignore[arg-type]
                                            size=batch):
                    yield row

    def size_bytes(self) -> int:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0
