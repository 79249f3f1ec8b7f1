"""The site's metadata in SQLite (WAL), through aiosqlite.

All writes go through one connection and one lock, each as a single transaction, so a
row set is either all there or not at all. Readers use the same connection; SQLite's
WAL keeps them cheap. Nothing here touches image files.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import aiosqlite

from .records import InstanceRecord, PatientRec, SeriesRec, StudyRec
from .schema import SCHEMA, SCHEMA_VERSION


class StoreError(Exception):
    """The metadata database cannot be used (locked, corrupt, disk full)."""


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class IngestResult:
    instance_id: int
    series_id: int
    duplicate: bool       # the instance was already stored
    same_content: bool    # for a duplicate: same bytes as the stored copy


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
        self._write_lock = asyncio.Lock()
        self._patient_salt = b""

    # -- lifecycle ------------------------------------------------------------
    async def open(self) -> "MetadataStore":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if self.durability == "full" else "NORMAL"
            await self._db.execute(f"PRAGMA synchronous={sync}")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=10000")
            await self._db.executescript(SCHEMA)
            self._patient_salt = await self._salt()
        except Exception as exc:
            if self._db is not None:
                await self._db.close()
                self._db = None
            raise StoreError(f"cannot open metadata database {self.path}: {exc}") from exc
        return self

    async def close(self) -> None:
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

    async def _salt(self) -> bytes:
        row = await self.fetchone("SELECT value FROM meta WHERE key='patient_salt'")
        if row:
            return bytes.fromhex(row[0])
        salt = os.urandom(32)
        await self.db.execute("INSERT INTO meta(key, value) VALUES ('patient_salt', ?), "
                              "('schema_version', ?)", (salt.hex(), str(SCHEMA_VERSION)))
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

    async def instance_file(self, sop_uid: str) -> StoredFile | None:
        row = await self.fetchone(
            "SELECT path, size, sha256 FROM instances WHERE sop_uid=? AND path IS NOT NULL",
            (sop_uid,))
        return StoredFile(*row) if row else None

    # -- writing ----------------------------------------------------------------
    async def ingest(self, rec: InstanceRecord, stored: StoredFile | None,
                     source: str = "local", jobs: Iterable[tuple[str, str, float]] = ()) -> IngestResult:
        """Commit one instance's rows (and any durable jobs) in one transaction."""
        now = time.time()
        async with self._write_lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                result = await self._ingest_rows(rec, stored, source, now)
                if not result.duplicate:
                    for kind, ref, delay in jobs:
                        await self._enqueue(kind, ref, now, delay)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return result

    async def _ingest_rows(self, rec: InstanceRecord, stored: StoredFile | None,
                           source: str, now: float) -> IngestResult:
        db = self.db
        existing = await self.fetchone(
            "SELECT id, series_id, sha256, path FROM instances WHERE sop_uid=?",
            (rec.instance.sop_uid,))
        if existing is not None:
            inst_id, series_id, sha, path = existing
            if path is None and stored is not None:
                await db.execute("UPDATE instances SET path=?, size=?, sha256=? WHERE id=?",
                                 (stored.path, stored.size, stored.sha256, inst_id))
                return IngestResult(inst_id, series_id, True, True)
            same = stored is None or sha == stored.sha256
            return IngestResult(inst_id, series_id, True, same)
        patient_id = await self._upsert_patient(rec.patient, now)
        study_id = await self._upsert_study(rec.study, patient_id, source, now)
        series_id = await self._upsert_series(rec.series, study_id, now)
        i = rec.instance
        cur = await db.execute(
            "INSERT INTO instances(sop_uid, series_id, sop_class_uid, instance_number, "
            "transfer_syntax, rows, columns, number_of_frames, position_z, path, size, "
            "sha256, source, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (i.sop_uid, series_id, i.sop_class_uid, i.number, i.transfer_syntax, i.rows,
             i.columns, i.frames, i.position_z, stored.path if stored else None,
             stored.size if stored else 0, stored.sha256 if stored else "", source, now))
        assert cur.lastrowid is not None
        return IngestResult(cur.lastrowid, series_id, False, True)

    async def _upsert_patient(self, p: PatientRec, now: float) -> int:
        key = self.patient_key(p.pid, p.issuer)
        row = await self.fetchone("SELECT id FROM patients WHERE patient_key=?", (key,))
        if row:
            await self.db.execute(
                "UPDATE patients SET sex=coalesce(nullif(?, ''), sex), "
                "birth_year=coalesce(?, birth_year), updated_at=? WHERE id=?",
                (p.sex, p.birth_year, now, row[0]))
            return int(row[0])
        cur = await self.db.execute(
            "INSERT INTO patients(patient_key, sex, birth_year, created_at, updated_at) "
            "VALUES (?,?,?,?,?)", (key, p.sex, p.birth_year, now, now))
        pid = cur.lastrowid
        await self.db.execute(
            "INSERT INTO patient_phi(patient_id, pid, issuer, name, birth_date) "
            "VALUES (?,?,?,?,?)", (pid, p.pid, p.issuer, p.name, p.birth_date))
        assert pid is not None
        return pid

    async def _upsert_study(self, s: StudyRec, patient_id: int, source: str,
                            now: float) -> int:
        row = await self.fetchone("SELECT id FROM studies WHERE study_uid=?", (s.uid,))
        if row:
            await self.db.execute("UPDATE studies SET updated_at=? WHERE id=?", (now, row[0]))
            return int(row[0])
        cur = await self.db.execute(
            "INSERT INTO studies(study_uid, patient_id, study_date, study_time, source, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
            (s.uid, patient_id, s.date, s.time, source, now, now))
        sid = cur.lastrowid
        await self.db.execute(
            "INSERT INTO study_phi(study_id, accession, study_id_text, description, "
            "referring_physician, institution) VALUES (?,?,?,?,?,?)",
            (sid, s.accession, s.study_id, s.description, s.referring_physician,
             s.institution))
        assert sid is not None
        return sid

    async def _upsert_series(self, s: SeriesRec, study_id: int, now: float) -> int:
        row = await self.fetchone("SELECT id FROM series WHERE series_uid=?", (s.uid,))
        if row:
            await self.db.execute("UPDATE series SET last_instance_at=? WHERE id=?",
                                  (now, row[0]))
            return int(row[0])
        cur = await self.db.execute(
            "INSERT INTO series(series_uid, study_id, modality, body_part, series_number, "
            "series_date, series_time, last_instance_at, created_at) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (s.uid, study_id, s.modality, s.body_part, s.number, s.date, s.time, now, now))
        sid = cur.lastrowid
        await self.db.execute(
            "INSERT INTO series_phi(series_id, description, operators, station) "
            "VALUES (?,?,?,?)", (sid, s.description, s.operators, s.station))
        assert sid is not None
        return sid

    async def upsert_study_tree(self, patient: PatientRec, study: StudyRec,
                                source: str) -> int:
        """Record a study known from an upstream PACS (no instances yet)."""
        now = time.time()
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                pid = await self._upsert_patient(patient, now)
                sid = await self._upsert_study(study, pid, source, now)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return sid

    async def run_in_transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    await self.db.execute(sql, params)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    # -- durable jobs ---------------------------------------------------------
    async def _enqueue(self, kind: str, ref: str, now: float, delay: float = 0.0) -> None:
        await self.db.execute(
            "INSERT INTO jobs(kind, ref, state, not_before, created_at, updated_at) "
            "VALUES (?,?,'pending',?,?,?) ON CONFLICT(kind, ref) DO UPDATE SET "
            "state='pending', not_before=excluded.not_before, updated_at=excluded.updated_at",
            (kind, ref, now + delay, now, now))

    async def enqueue(self, kind: str, ref: str, delay: float = 0.0) -> None:
        now = time.time()
        async with self._write_lock:
            await self._enqueue(kind, ref, now, delay)

    async def due_jobs(self, kind: str, limit: int = 100) -> list[tuple[int, str]]:
        rows = await self.fetchall(
            "SELECT id, ref FROM jobs WHERE kind=? AND state IN ('pending','running') "
            "AND not_before<=? ORDER BY not_before LIMIT ?", (kind, time.time(), limit))
        return [(int(r[0]), str(r[1])) for r in rows]

    async def finish_job(self, job_id: int, ok: bool, error: str = "",
                         retry_in: float = 60.0) -> None:
        now = time.time()
        async with self._write_lock:
            if ok:
                await self.db.execute("UPDATE jobs SET state='done', updated_at=? WHERE id=?",
                                      (now, job_id))
            else:
                await self.db.execute(
                    "UPDATE jobs SET state='pending', attempts=attempts+1, last_error=?, "
                    "not_before=?, updated_at=? WHERE id=?",
                    (error[:500], now + retry_in, now, job_id))
