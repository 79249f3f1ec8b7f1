"""The site's metadata in SQLite (WAL).

Reads go through aiosqlite so the event loop never blocks; all writes go through one
synchronous writer connection (``node.store.writer``) serialised by one lock, each as a
single transaction, so a row set is either all there or not at all. DICOM association
threads call the ``*_sync`` methods directly; async code awaits the others. Nothing here
touches image files.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import aiosqlite

from ..datadir import create_private_file
from .records import InstanceRecord, PatientRec, StudyRec
from .schema import SCHEMA, SCHEMA_VERSION
from .writer import IngestResult, MetadataWriter, StoredFile, enqueue, upsert_study

__all__ = ["Counts", "IngestResult", "MetadataStore", "StoreError", "StoredFile"]

T = TypeVar("T")


class StoreError(Exception):
    """The metadata database cannot be used (locked, corrupt, disk full)."""


@dataclass(frozen=True)
class Counts:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int
    pending_jobs: int


class MetadataStore:
    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        self._db: aiosqlite.Connection | None = None
        self._writer: MetadataWriter | None = None
        self._patient_salt = b""

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> "MetadataStore":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # SQLite gives the WAL and shared-memory files the database file's mode, so
            # creating it 0600 keeps all three private whatever the umask.
            create_private_file(self.path)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=10000")
            await self._db.executescript(SCHEMA)
            self._writer = MetadataWriter(self.path, durability=self.durability,
                                          patient_key=self.patient_key)
            self._patient_salt = await self._salt()
        except Exception as exc:
            await self.close()
            raise StoreError(f"cannot open metadata database {self.path}: {exc}") from exc
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> "MetadataStore":
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("metadata database is not open")
        return self._db

    @property
    def writer(self) -> MetadataWriter:
        if self._writer is None:
            raise StoreError("metadata database is not open")
        return self._writer

    async def _salt(self) -> bytes:
        row = await self.fetchone("SELECT value FROM meta WHERE key='patient_salt'")
        if row:
            return bytes.fromhex(row[0])
        salt = os.urandom(32)
        await self.write(lambda conn: conn.execute(
            "INSERT INTO meta(key, value) VALUES ('patient_salt', ?), ('schema_version', ?)",
            (salt.hex(), str(SCHEMA_VERSION))))
        return salt

    # -- reading ----------------------------------------------------------------
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self.db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self.db.execute(sql, params) as cur:
            return await cur.fetchone()

    def patient_key(self, pid: str, issuer: str) -> str:
        """Local link key for a patient: keyed so the DB file alone does not reveal IDs."""
        msg = f"{pid.strip().upper()}\x00{issuer.strip().upper()}".encode()
        return hmac.new(self._patient_salt, msg, hashlib.sha256).hexdigest()

    async def counts(self) -> Counts:
        row = await self.fetchone(
            "SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies), "
            "(SELECT count(*) FROM series), (SELECT count(*) FROM instances), "
            "(SELECT coalesce(sum(size), 0) FROM instances WHERE path IS NOT NULL), "
            "(SELECT count(*) FROM jobs WHERE state IN ('pending', 'running'))")
        assert row is not None
        return Counts(*row)

    _FILE_SQL = "SELECT path, size, sha256 FROM instances WHERE sop_uid=? AND path IS NOT NULL"

    async def instance_file(self, sop_uid: str) -> StoredFile | None:
        row = await self.fetchone(self._FILE_SQL, (sop_uid,))
        return StoredFile(*row) if row else None

    def instance_file_sync(self, sop_uid: str) -> StoredFile | None:
        """For DICOM threads: read on the writer connection (sees every commit)."""
        row = self.writer.read_one(self._FILE_SQL, (sop_uid,))
        return StoredFile(*row) if row else None

    # -- writing ----------------------------------------------------------------
    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(conn)`` in one write transaction, off the event loop."""
        return await asyncio.to_thread(self.writer.run, work)

    def ingest_sync(self, rec: InstanceRecord, stored: StoredFile | None,
                    source: str = "local", jobs: Iterable[tuple[str, str, float]] = ()
                    ) -> IngestResult:
        return self.writer.ingest(rec, stored, source, list(jobs))

    async def ingest(self, rec: InstanceRecord, stored: StoredFile | None,
                     source: str = "local", jobs: Iterable[tuple[str, str, float]] = ()
                     ) -> IngestResult:
        """Commit one instance's rows (and any durable jobs) in one transaction."""
        return await asyncio.to_thread(self.ingest_sync, rec, stored, source, list(jobs))

    async def ingest_many(self, records: Sequence[InstanceRecord], source: str) -> int:
        """Many path-less instances in ONE transaction (one fsync); returns how many were new."""
        def work(conn: sqlite3.Connection) -> int:
            now = time.time()
            return sum(0 if self.writer.ingest_rows(conn, rec, None, source, now).duplicate
                       else 1 for rec in records)
        return await self.write(work) if records else 0

    async def upsert_study_tree(self, patient: PatientRec, study: StudyRec,
                                source: str) -> int:
        """Record a study known from an upstream PACS (no instances yet)."""
        def work(conn: sqlite3.Connection) -> int:
            now = time.time()
            return upsert_study(conn, study, self.writer.upsert_patient(conn, patient, now),
                                source, now)
        return await self.write(work)

    async def run_in_transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        items = list(statements)

        def work(conn: sqlite3.Connection) -> None:
            for sql, params in items:
                conn.execute(sql, params)
        await self.write(work)

    # -- durable jobs ---------------------------------------------------------
    async def enqueue(self, kind: str, ref: str, delay: float = 0.0) -> None:
        await self.write(lambda conn: enqueue(conn, kind, ref, time.time(), delay))

    async def due_jobs(self, kind: str, limit: int = 100) -> list[tuple[int, str]]:
        rows = await self.fetchall(
            "SELECT id, ref FROM jobs WHERE kind=? AND state IN ('pending','running') "
            "AND not_before<=? ORDER BY not_before LIMIT ?", (kind, time.time(), limit))
        return [(int(r[0]), str(r[1])) for r in rows]

    async def finish_job(self, job_id: int, ok: bool, error: str = "",
                         retry_in: float = 60.0) -> None:
        now = time.time()
        if ok:
            await self.run_in_transaction([(
                "UPDATE jobs SET state='done', updated_at=? WHERE id=?", (now, job_id))])
        else:
            await self.run_in_transaction([(
                "UPDATE jobs SET state='pending', attempts=attempts+1, last_error=?, "
                "not_before=?, updated_at=? WHERE id=?",
                (error[:500], now + retry_in, now, job_id))])
