"""The site's metadata behind one interface: SQLite (embedded default) or PostgreSQL.

``MetadataStore`` is what the rest of the node uses; the backend (``sqlite_backend`` or
``postgres_backend``) is chosen by ``[store] url`` in medfed.toml. Reads go through a
pool of reader connections so one slow query does not hold the others; all writes go
through one synchronous writer connection serialised by one lock, each as a single
transaction, so a row set is either all there or not at all. DICOM association threads
call the ``*_sync`` methods directly; async code awaits the others. SQL uses ``?``
placeholders on both backends. Nothing here touches image files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Sequence, TypeVar

from node.deid.actions import pseudonym

from .dialect import Dialect
from .records import InstanceRecord, PatientRec, StudyRec
from .sqlite_backend import SqliteBackend
from .writer import IngestResult, MetadataWriter, SqlConnection, StoredFile, enqueue, upsert_study

if TYPE_CHECKING:
    from node.config.model import NodeConfig

__all__ = ["Counts", "IngestResult", "MetadataStore", "StoreError", "StoredFile"]

T = TypeVar("T")
_PSN_BATCH = 5000


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
    def __init__(self, path: Path, *, durability: str = "full", url: str | None = None,
                 readers: int = 4, cache_mb: int = 32) -> None:
        self.path = path
        self.durability = durability
        self.url = url
        if url:
            from .postgres_backend import PostgresBackend
            self._backend: Any = PostgresBackend(url, readers=readers)
        else:
            self._backend = SqliteBackend(path, durability=durability, readers=readers,
                                          cache_mb=cache_mb)
        self._writer: MetadataWriter | None = None
        self._patient_salt = b""
        self._sync_readers: list[sqlite3.Connection] = []   # idle, most recent last
        self._sync_lock = threading.Lock()
        self._psn_fingerprint: str | None = None
        self._psn_lock: asyncio.Lock | None = None

    @classmethod
    def for_config(cls, cfg: "NodeConfig") -> "MetadataStore":
        """The store a node's medfed.toml names (``[store] url``; default its SQLite file)."""
        return cls(cfg.db_path, durability=cfg.durability, url=cfg.store_url,
                   readers=cfg.store_readers, cache_mb=cfg.store_cache_mb)

    @property
    def dialect(self) -> Dialect:
        return self._backend.dialect  # type: ignore[no-any-return]

    @property
    def where(self) -> str:
        """Where the metadata lives, for messages (never a password)."""
        return self._backend.where if self.url else str(self.path)  # type: ignore[no-any-return]

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> "MetadataStore":
        try:
            conn = await asyncio.to_thread(self._backend.connect_writer)
            self._writer = MetadataWriter(conn, begin=self._backend.begin,
                                          patient_key=self.patient_key,
                                          relax=getattr(self._backend, "relax", None))
            await self._backend.open_readers()
            self._patient_salt = await self._salt()
        except Exception as exc:
            await self.close()
            raise StoreError(f"cannot open metadata database {self.where}: {exc}") from exc
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._close_sync_readers()
        await self._backend.close()

    async def __aenter__(self) -> "MetadataStore":
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
            "INSERT INTO meta(key, value) VALUES ('patient_salt', ?)", (salt.hex(),)))
        return salt

    async def schema_version(self) -> int:
        row = await self.fetchone("SELECT value FROM meta WHERE key='schema_version'")
        return int(row[0]) if row else 0

    def size_bytes(self) -> int:
        """Bytes the metadata takes on disk (file + WAL, or the PostgreSQL database)."""
        return int(self._backend.size_bytes())

    # -- reading ----------------------------------------------------------------
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return await self._backend.fetchall(sql, params)  # type: ignore[no-any-return]
        except RuntimeError as exc:
            raise StoreError(str(exc)) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def stream(self, sql: str, params: Sequence[Any] = (), *,
                     batch: int = 256) -> AsyncIterator[Any]:
        """Rows as they are read, ``batch`` at a time, on one pooled reader: a large
        answer is never held whole in memory."""
        async with contextlib.aclosing(self._backend.stream(sql, params, batch)) as rows:
            async for row in rows:   # closed at once when the caller stops early
                yield row

    def read_sync(self, sql: str, params: Sequence[Any] = ()) -> list[Any] | None:
        """A read from a blocking thread (a DICOM association) on a read-only SQLite
        connection of its own for the read: no hop to the event loop and a pooled
        reader, which cost about 0.5-1.2 ms per C-FIND on a busy 2-core machine (issue
        15). The connections are kept between associations (one per concurrent reader):
        opening one per association thread, with a cold page cache, cost ~1 ms of each
        findscu process's C-FIND. None with PostgreSQL (no blocking reader here):
        callers then take the async path."""
        if self.url:
            return None
        with self._sync_lock:
            conn = self._sync_readers.pop() if self._sync_readers else None
        if conn is None:
            if self._writer is None:
                raise StoreError("metadata database is not open")
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            with self._sync_lock:
                kept = self._writer is not None   # closed meanwhile: not kept
                if kept:
                    self._sync_readers.append(conn)
            if not kept:
                conn.close()

    def _close_sync_readers(self) -> None:
        with self._sync_lock:
            conns, self._sync_readers = self._sync_readers, []
        for conn in conns:
            conn.close()

    def patient_key(self, pid: str, issuer: str) -> str:
        """Local link key for a patient: keyed so the DB file alone does not reveal IDs."""
        msg = f"{pid.strip().upper()}\x00{issuer.strip().upper()}".encode()
        return hmac.new(self._patient_salt, msg, hashlib.sha256).hexdigest()

    async def counts(self) -> Counts:
        """Site totals in constant time (kept by triggers), plus the pending jobs."""
        totals = {str(k): int(v) for k, v in await self.fetchall("SELECT name, value FROM totals")}
        row = await self.fetchone(
            "SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')")
        return Counts(totals.get("patients", 0), totals.get("studies", 0),
                      totals.get("series", 0), totals.get("instances", 0),
                      totals.get("bytes", 0), int(row[0]) if row else 0)

    async def refresh_statistics(self) -> None:
        """After a bulk load (``synth --metadata-only``, a first pseudonym fill): fresh
        planner statistics on PostgreSQL. Autovacuum refreshes them about once a minute;
        a plan made on the old ones made a 10-match C-FIND at 10^6 instances 5x slower
        (24.7 -> 4.7 ms, issue 12). SQLite plans without statistics: nothing to do."""
        if self.dialect.postgres:
            await self.write(lambda conn: conn.execute("ANALYZE"))

    # -- the stored federation pseudonym -----------------------------------------
    async def ensure_pseudonyms(self, linkage_key: bytes) -> None:
        """Make ``patients.pseudonym`` hold every patient's pseudonym under
        ``linkage_key``: computed once here (all patients when the key changed, only
        missing ones otherwise) and at ingest from then on. Cheap when already done."""
        fingerprint = hmac.new(linkage_key, b"medfed-stored-pseudonym", hashlib.sha256
                               ).hexdigest()[:32]
        if fingerprint == self._psn_fingerprint:
            return
        if self._psn_lock is None:
            self._psn_lock = asyncio.Lock()
        async with self._psn_lock:
            if fingerprint == self._psn_fingerprint:
                return
            self.writer.pseudonym = lambda pid, issuer: pseudonym(pid, issuer, linkage_key)
            row = await self.fetchone("SELECT value FROM meta WHERE key='pseudonym_key'")
            everyone = row is None or row[0] != fingerprint
            await asyncio.to_thread(self._fill_pseudonyms, linkage_key, everyone, fingerprint)
            if everyone:
                await self.refresh_statistics()
            self._psn_fingerprint = fingerprint

    def _fill_pseudonyms(self, key: bytes, everyone: bool, fingerprint: str) -> None:
        after = 0
        which = "" if everyone else "AND p.pseudonym IS NULL "
        while True:
            def batch(conn: SqlConnection, after: int = after) -> int:
                rows = conn.execute(
                    "SELECT p.id, pp.pid, pp.issuer FROM patients p JOIN patient_phi pp "
                    f"ON pp.patient_id = p.id WHERE p.id > ? {which}ORDER BY p.id LIMIT ?",
                    (after, _PSN_BATCH)).fetchall()
                for pid, text, issuer in rows:
                    conn.execute("UPDATE patients SET pseudonym=? WHERE id=?",
                                 (pseudonym(text or "", issuer or "", key), pid))
                return int(rows[-1][0]) if len(rows) == _PSN_BATCH else -1
            after = self.writer.run(batch)
            if after < 0:
                break
        self.writer.run(lambda conn: conn.execute(
            "INSERT INTO meta(key, value) VALUES ('pseudonym_key', ?) ON CONFLICT(key) "
            "DO UPDATE SET value=excluded.value", (fingerprint,)))

    _FILE_SQL = "SELECT path, size, sha256 FROM instances WHERE sop_uid=? AND path IS NOT NULL"

    async def instance_file(self, sop_uid: str) -> StoredFile | None:
        row = await self.fetchone(self._FILE_SQL, (sop_uid,))
        return StoredFile(*row) if row else None

    def instance_file_sync(self, sop_uid: str) -> StoredFile | None:
        """For DICOM threads: read on a pooled SQLite reader (``read_sync``; WAL: it
        sees every commit made before), so that the check does not queue for
        the writer behind other associations' commits (2.8 ms a C-STORE with 4 senders,
        issue 15); PostgreSQL reads on the writer connection."""
        rows = self.read_sync(self._FILE_SQL, (sop_uid,))
        if rows is None:
            row = self.writer.read_one(self._FILE_SQL, (sop_uid,))
            return StoredFile(*row) if row else None
        return StoredFile(*rows[0]) if rows else None

    # -- writing ----------------------------------------------------------------
    async def write(self, work: Callable[[SqlConnection], T]) -> T:
        """Run ``work(conn)`` in one write transaction, off the event loop."""
        return await asyncio.to_thread(self.writer.run, work)

    def ingest_sync(self, rec: InstanceRecord, stored: StoredFile | None,
                    source: str = "local", jobs: Iterable[tuple[str, str, float]] = (),
                    *, relaxed: bool = False) -> IngestResult:
        """``relaxed``: the caller's own log (the ingest journal) already made the
        instance durable; SQLite then commits without a flush of its own."""
        return self.writer.ingest(rec, stored, source, list(jobs), relaxed=relaxed)

    async def ingest(self, rec: InstanceRecord, stored: StoredFile | None,
                     source: str = "local", jobs: Iterable[tuple[str, str, float]] = ()
                     ) -> IngestResult:
        """Commit one instance's rows (and any durable jobs) in one transaction."""
        return await asyncio.to_thread(self.ingest_sync, rec, stored, source, list(jobs))

    async def ingest_many(self, records: Sequence[InstanceRecord], source: str) -> int:
        """Many path-less instances in ONE transaction (one fsync); returns how many were new."""
        def work(conn: SqlConnection) -> int:
            return self.writer.ingest_pathless(conn, records, source, time.time())
        return await self.write(work) if records else 0

    async def upsert_study_tree(self, patient: PatientRec, study: StudyRec,
                                source: str) -> int:
        """Record a study known from an upstream PACS (no instances yet)."""
        def work(conn: SqlConnection) -> int:
            now = time.time()
            return upsert_study(conn, study, self.writer.upsert_patient(conn, patient, now),
                                source, now)
        return await self.write(work)

    async def run_in_transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        items = list(statements)

        def work(conn: SqlConnection) -> None:
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
