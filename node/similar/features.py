"""Feature vectors cached per series and method, so a similarity query is a vector scan.

The table lives in the site's metadata database beside ``series`` (its SQL stays here,
run through the store's connection API: ``MetadataStore.write`` / ``fetchall``). A
vector is computed once a series is complete (idle like the publisher waits) and again
when it changes (``source_at`` < the series' ``last_instance_at``). A series whose
pixels cannot be read gets a row with ``problem`` set and no vector, so it is not
retried on every pass. ``FeatureMatrix`` keeps one method's vectors in memory as one
float32 matrix and reloads only when the table changed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass, field

import numpy as np

from node.sharing.build import SeriesUnavailable, series_sources
from node.store.db import MetadataStore
from node.store.files import ObjectFiles

from .method import SimilarityMethod
from .registry import MethodRegistry
from .volume import VolumeUnavailable, read_volume

log = logging.getLogger("medfed.similar")

SCHEMA = """
CREATE TABLE IF NOT EXISTS similarity_features (
    series_id INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB,                          -- float32 little-endian, NULL when problem is set
    problem TEXT NOT NULL DEFAULT '',
    source_at REAL NOT NULL,              -- series.last_instance_at it was computed from
    computed_at REAL NOT NULL,
    PRIMARY KEY (series_id, method)
);
CREATE INDEX IF NOT EXISTS similarity_features_method ON similarity_features(method, version);
"""

_PENDING = """
SELECT se.id, se.series_uid, se.last_instance_at FROM series se
LEFT JOIN similarity_features f ON f.series_id = se.id AND f.method = ? AND f.version = ?
WHERE se.last_instance_at <= ? AND (f.series_id IS NULL OR f.source_at < se.last_instance_at)
  AND EXISTS (SELECT 1 FROM instances i WHERE i.series_id = se.id AND i.path IS NOT NULL)
ORDER BY se.id LIMIT ?"""

_STAMP = "SELECT count(*), coalesce(max(computed_at), 0) FROM similarity_features WHERE method = ?"

_ROWS = """
SELECT f.series_id, se.series_uid, se.modality, se.body_part, f.vector
FROM similarity_features f JOIN series se ON se.id = f.series_id
WHERE f.method = ? AND f.version = ? AND f.vector IS NOT NULL AND f.dim = ?
ORDER BY f.series_id"""


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """DDL inside the writer's transaction (``executescript`` would commit it early)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


async def ensure_schema(store: MetadataStore) -> None:
    await store.write(lambda conn: run_script(conn, SCHEMA))


@dataclass(frozen=True)
class PendingSeries:
    series_id: int
    series_uid: str
    last_instance_at: float


async def pending(store: MetadataStore, method: SimilarityMethod, *, idle_s: float,
                  limit: int = 64) -> list[PendingSeries]:
    rows = await store.fetchall(_PENDING, (method.id, method.version, time.time() - idle_s, limit))
    return [PendingSeries(int(r[0]), str(r[1]), float(r[2])) for r in rows]


def put_vector(conn: sqlite3.Connection, series: PendingSeries, method: SimilarityMethod,
         vector: np.ndarray | None, problem: str) -> None:
    blob = None if vector is None else np.asarray(vector, dtype="<f4").tobytes()
    conn.execute("INSERT OR REPLACE INTO similarity_features(series_id, method, version, dim, "
                 "vector, problem, source_at, computed_at) VALUES (?,?,?,?,?,?,?,?)",
                 (series.series_id, method.id, method.version, method.dim, blob, problem[:200],
                  series.last_instance_at, time.time()))


@dataclass
class IndexReport:
    computed: int = 0
    failed: int = 0


class FeatureIndexer:
    """Computes missing or stale vectors for every known method (one volume read per series)."""

    def __init__(self, store: MetadataStore, files: ObjectFiles, registry: MethodRegistry) -> None:
        self.store, self.files, self.registry = store, files, registry

    async def run_once(self, *, idle_s: float, limit: int = 64) -> IndexReport:
        report = IndexReport()
        todo: dict[int, tuple[PendingSeries, list[SimilarityMethod]]] = {}
        for method in self.registry.methods.values():
            for item in await pending(self.store, method, idle_s=idle_s, limit=limit):
                todo.setdefault(item.series_id, (item, []))[1].append(method)
        for item, methods in todo.values():
            vectors, problem = await self.compute(item, methods)
            if problem:
                report.failed += 1
                log.info("similarity features for series #%d not computed: %s",
                         item.series_id, problem)
            else:
                report.computed += 1

            def store_all(conn: sqlite3.Connection) -> None:
                for method in methods:
                    put_vector(conn, item, method, vectors.get(method.id), problem)
            await self.store.write(store_all)
        return report

    async def run_all(self, *, idle_s: float = 0.0) -> IndexReport:
        """Until nothing is pending (tests, the simulator, ``medfed similar`` in-process)."""
        total = IndexReport()
        while True:
            report = await self.run_once(idle_s=idle_s)
            total.computed += report.computed
            total.failed += report.failed
            if report.computed + report.failed == 0:
                return total

    async def compute(self, item: PendingSeries, methods: list[SimilarityMethod]
                       ) -> tuple[dict[str, np.ndarray], str]:
        try:
            sources = await series_sources(self.store, self.files, item.series_uid)
            volume = await asyncio.to_thread(read_volume, sources)
            vectors = {}
            for method in methods:
                vector = np.asarray(await asyncio.to_thread(method.features, volume), dtype=np.float32)
                if vector.shape != (method.dim,) or not np.all(np.isfinite(vector)):
                    return {}, f"method {method.id} returned a vector of the wrong shape or NaN"
                vectors[method.id] = vector
            return vectors, ""
        except (SeriesUnavailable, VolumeUnavailable) as exc:
            return {}, str(exc)
        except Exception as exc:  # a broken file or plug-in must not stop the indexer
            return {}, f"{type(exc).__name__} while computing features"


@dataclass
class FeatureMatrix:
    """One method's vectors at this site, in memory, refreshed when the table changes."""

    method: SimilarityMethod
    stamp: tuple[int, float] = (-1, 0.0)
    series_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    series_uids: list[str] = field(default_factory=list)
    modality: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    body_part: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    async def refresh(self, store: MetadataStore) -> None:
        row = await store.fetchone(_STAMP, (self.method.id,))
        stamp = (int(row[0]), float(row[1])) if row else (0, 0.0)
        if stamp == self.stamp:
            return
        rows = await store.fetchall(_ROWS, (self.method.id, self.method.version, self.method.dim))
        dim = self.method.dim
        self.series_ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
        self.series_uids = [str(r[1]) for r in rows]
        self.modality = np.array([str(r[2]) for r in rows], dtype=object)
        self.body_part = np.array([str(r[3]) for r in rows], dtype=object)
        self.vectors = (np.frombuffer(b"".join(bytes(r[4]) for r in rows), dtype="<f4")
                        .reshape(len(rows), dim) if rows else np.zeros((0, dim), dtype=np.float32))
        self.stamp = stamp

    def candidates(self, modality: str | None, body_part: str | None) -> np.ndarray:
        """Row positions that match the filters (all rows without filters)."""
        keep = np.ones(len(self.series_uids), dtype=bool)
        if modality is not None:
            keep &= self.modality == modality
        if body_part is not None:
            keep &= self.body_part == body_part
        return np.flatnonzero(keep)
