"""Provenance records and diagnoses kept at a node, in its metadata database.

A site keeps the ``similarity.compute`` records it signed; a home node keeps every
record of its runs (the sites' and its own ``similarity.rank``) and of the diagnoses
its clinicians recorded. Diagnoses and reports are clinical free text, so they live in
a ``*_phi`` table like the rest of this site's PHI, linked to the series they describe,
the run and the matches they were based on. The SQL stays in this module and runs
through the store's connection API.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from node.store.db import MetadataStore

from .features import run_script
from .provenance import ProvenanceRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS similarity_provenance (
    record_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,                  -- the request id the record belongs to
    kind TEXT NOT NULL,
    site TEXT NOT NULL,
    digest TEXT NOT NULL,
    body TEXT NOT NULL,                    -- the signed record, JSON
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS similarity_provenance_run ON similarity_provenance(run_id);

CREATE TABLE IF NOT EXISTS series_diagnosis_phi (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
    diagnosis TEXT NOT NULL,
    report TEXT NOT NULL DEFAULT '',
    author TEXT NOT NULL,                  -- pseudonymous user handle
    run_id TEXT NOT NULL DEFAULT '',
    matches TEXT NOT NULL DEFAULT '[]',    -- JSON list of the matches it was based on
    record_id TEXT NOT NULL DEFAULT '',    -- its diagnosis.record provenance
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_diagnosis_series ON series_diagnosis_phi(series_id, created_at);
"""


async def ensure_schema(store: MetadataStore) -> None:
    await store.write(lambda conn: run_script(conn, SCHEMA))


async def save_records(store: MetadataStore, run_id: str, records: list[ProvenanceRecord]) -> None:
    def work(conn: sqlite3.Connection) -> None:
        now = time.time()
        for record in records:
            conn.execute("INSERT OR REPLACE INTO similarity_provenance(record_id, run_id, kind, "
                         "site, digest, body, created_at) VALUES (?,?,?,?,?,?,?)",
                         (record.record_id, run_id, record.kind, record.site, record.digest,
                          json.dumps(record.to_dict(), sort_keys=True), now))
    await store.write(work)


@dataclass(frozen=True)
class StoredRecord:
    run_id: str
    digest: str            # as stored (a later edit of the body shows as a mismatch)
    body: str


async def load_records(store: MetadataStore, run_id: str | None = None) -> list[StoredRecord]:
    where, params = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
    rows = await store.fetchall(f"SELECT run_id, digest, body FROM similarity_provenance {where} "
                                "ORDER BY created_at, record_id", params)
    return [StoredRecord(str(r[0]), str(r[1]), str(r[2])) for r in rows]


@dataclass(frozen=True)
class Diagnosis:
    series_id: int
    diagnosis: str
    report: str
    author: str
    run_id: str
    matches: list[dict[str, object]]
    record_id: str
    created_at: float


async def add_diagnosis(store: MetadataStore, d: Diagnosis) -> None:
    await store.write(lambda conn: conn.execute(
        "INSERT INTO series_diagnosis_phi(series_id, diagnosis, report, author, run_id, matches, "
        "record_id, created_at) VALUES (?,?,?,?,?,?,?,?)",
        (d.series_id, d.diagnosis, d.report, d.author, d.run_id, json.dumps(d.matches),
         d.record_id, d.created_at)))


async def diagnoses(store: MetadataStore, series_id: int) -> list[Diagnosis]:
    rows = await store.fetchall(
        "SELECT series_id, diagnosis, report, author, run_id, matches, record_id, created_at "
        "FROM series_diagnosis_phi WHERE series_id = ? ORDER BY created_at", (series_id,))
    return [Diagnosis(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), json.loads(r[5]),
                      str(r[6]), float(r[7])) for r in rows]


async def latest_diagnoses(store: MetadataStore, series_ids: list[int]) -> dict[int, tuple[str, str]]:
    """series id -> (diagnosis, report) most recently recorded, for the given series."""
    if not series_ids:
        return {}
    marks = ",".join("?" * len(series_ids))
    rows = await store.fetchall(
        f"SELECT series_id, diagnosis, report FROM series_diagnosis_phi WHERE series_id IN ({marks}) "
        "ORDER BY created_at", series_ids)
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}
