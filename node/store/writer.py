"""The one connection that writes a site's metadata.

C-STORE handlers run in pynetdicom's association threads; they commit here directly
instead of hopping onto the event loop and through aiosqlite's thread for each SQL
statement (measured: ~20 % more instances per second on one association). Async code
reaches the same connection through ``asyncio.to_thread``. One lock serialises all
writes, each a single ``BEGIN IMMEDIATE … COMMIT`` transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from .records import InstanceRecord, PatientRec, SeriesRec, StudyRec

T = TypeVar("T")


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


class MetadataWriter:
    def __init__(self, path: Path, *, durability: str, patient_key: Callable[[str, str], str]
                 ) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._lock = threading.Lock()
        self._patient_key = patient_key

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside one write transaction."""
        with self.transaction() as conn:
            return work(conn)

    def read_one(self, sql: str, params: tuple[object, ...] = ()) -> tuple | None:  # type: ignore[type-arg]
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    # -- instances ----------------------------------------------------------------
    def ingest(self, rec: InstanceRecord, stored: StoredFile | None, source: str = "local",
               jobs: Iterable[tuple[str, str, float]] = ()) -> IngestResult:
        """One instance's rows, and the durable jobs it causes, in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            result = self.ingest_rows(conn, rec, stored, source, now)
            if not result.duplicate:
                for kind, ref, delay in jobs:
                    enqueue(conn, kind, ref, now, delay)
        return result

    def ingest_rows(self, conn: sqlite3.Connection, rec: InstanceRecord,
                    stored: StoredFile | None, source: str, now: float) -> IngestResult:
        existing = conn.execute(
            "SELECT id, series_id, sha256, path FROM instances WHERE sop_uid=?",
            (rec.instance.sop_uid,)).fetchone()
        if existing is not None:
            inst_id, series_id, sha, path = existing
            if path is None and stored is not None:
                conn.execute("UPDATE instances SET path=?, size=?, sha256=? WHERE id=?",
                             (stored.path, stored.size, stored.sha256, inst_id))
                return IngestResult(inst_id, series_id, True, True)
            return IngestResult(inst_id, series_id, True, stored is None or sha == stored.sha256)
        patient_id = self.upsert_patient(conn, rec.patient, now)
        study_id = upsert_study(conn, rec.study, patient_id, source, now)
        series_id = upsert_series(conn, rec.series, study_id, now)
        i = rec.instance
        cur = conn.execute(
            "INSERT INTO instances(sop_uid, series_id, sop_class_uid, instance_number, "
            "transfer_syntax, rows, columns, number_of_frames, position_z, path, size, "
            "sha256, source, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (i.sop_uid, series_id, i.sop_class_uid, i.number, i.transfer_syntax, i.rows,
             i.columns, i.frames, i.position_z, stored.path if stored else None,
             stored.size if stored else 0, stored.sha256 if stored else "", source, now))
        assert cur.lastrowid is not None
        return IngestResult(cur.lastrowid, series_id, False, True)

    def upsert_patient(self, conn: sqlite3.Connection, p: PatientRec, now: float) -> int:
        key = self._patient_key(p.pid, p.issuer)
        row = conn.execute("SELECT id FROM patients WHERE patient_key=?", (key,)).fetchone()
        if row:
            conn.execute("UPDATE patients SET sex=coalesce(nullif(?, ''), sex), "
                         "birth_year=coalesce(?, birth_year), updated_at=? WHERE id=?",
                         (p.sex, p.birth_year, now, row[0]))
            return int(row[0])
        cur = conn.execute(
            "INSERT INTO patients(patient_key, sex, birth_year, created_at, updated_at) "
            "VALUES (?,?,?,?,?)", (key, p.sex, p.birth_year, now, now))
        pid = cur.lastrowid
        conn.execute("INSERT INTO patient_phi(patient_id, pid, issuer, name, birth_date) "
                     "VALUES (?,?,?,?,?)", (pid, p.pid, p.issuer, p.name, p.birth_date))
        assert pid is not None
        return pid


def upsert_study(conn: sqlite3.Connection, s: StudyRec, patient_id: int, source: str,
                 now: float) -> int:
    row = conn.execute("SELECT id FROM studies WHERE study_uid=?", (s.uid,)).fetchone()
    if row:
        conn.execute("UPDATE studies SET updated_at=? WHERE id=?", (now, row[0]))
        return int(row[0])
    cur = conn.execute(
        "INSERT INTO studies(study_uid, patient_id, study_date, study_time, source, "
        "created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
        (s.uid, patient_id, s.date, s.time, source, now, now))
    sid = cur.lastrowid
    conn.execute(
        "INSERT INTO study_phi(study_id, accession, study_id_text, description, "
        "referring_physician, institution) VALUES (?,?,?,?,?,?)",
        (sid, s.accession, s.study_id, s.description, s.referring_physician, s.institution))
    assert sid is not None
    return sid


def upsert_series(conn: sqlite3.Connection, s: SeriesRec, study_id: int, now: float) -> int:
    row = conn.execute("SELECT id FROM series WHERE series_uid=?", (s.uid,)).fetchone()
    if row:
        conn.execute("UPDATE series SET last_instance_at=? WHERE id=?", (now, row[0]))
        return int(row[0])
    cur = conn.execute(
        "INSERT INTO series(series_uid, study_id, modality, body_part, series_number, "
        "series_date, series_time, last_instance_at, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
        (s.uid, study_id, s.modality, s.body_part, s.number, s.date, s.time, now, now))
    sid = cur.lastrowid
    conn.execute("INSERT INTO series_phi(series_id, description, operators, station) "
                 "VALUES (?,?,?,?)", (sid, s.description, s.operators, s.station))
    assert sid is not None
    return sid


def enqueue(conn: sqlite3.Connection, kind: str, ref: str, now: float, delay: float = 0.0) -> None:
    """A durable job; re-queuing an existing one moves its start (a series still growing)."""
    conn.execute(
        "INSERT INTO jobs(kind, ref, state, not_before, created_at, updated_at) "
        "VALUES (?,?,'pending',?,?,?) ON CONFLICT(kind, ref) DO UPDATE SET "
        "state='pending', not_before=excluded.not_before, updated_at=excluded.updated_at",
        (kind, ref, now + delay, now, now))
