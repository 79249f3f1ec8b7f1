"""SQL for the upstream PACS front: sync bookkeeping and the scratch-cache rows.

Why a separate module: db.py is the ingest path every node uses; what only a node that
fronts a PACS needs lives here, as functions over a MetadataStore. Writes still go
through the store's one lock and one transaction each.

Cached files are recorded in ``instances.path`` as ``cache/<study>/<series>/<sop>.dcm``,
relative to the node's data dir (a C-STORE'd file's path is relative to the objects
dir and starts with a digit, so the two never collide). A ``cache_entries`` row marks a
path as evictable; rows without one are never touched by eviction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from .db import MetadataStore
from .records import InstanceRecord

CACHE_PREFIX = "cache/"
_CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit


def _chunks(values: Sequence[str] | Sequence[int]) -> Iterable[Sequence[str] | Sequence[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# -- sync bookkeeping ------------------------------------------------------------
@dataclass(frozen=True)
class SyncState:
    last_sync_at: float
    last_study_date: str
    studies_seen: int


async def get_sync_state(store: MetadataStore, upstream: str) -> SyncState | None:
    row = await store.fetchone(
        "SELECT last_sync_at, last_study_date, studies_seen FROM sync_state WHERE upstream=?",
        (upstream,))
    return SyncState(float(row[0]), str(row[1]), int(row[2])) if row else None


async def put_sync_state(store: MetadataStore, upstream: str, state: SyncState) -> None:
    await store.run_in_transaction([(
        "INSERT INTO sync_state(upstream, last_sync_at, last_study_date, studies_seen) "
        "VALUES (?,?,?,?) ON CONFLICT(upstream) DO UPDATE SET "
        "last_sync_at=excluded.last_sync_at, last_study_date=excluded.last_study_date, "
        "studies_seen=excluded.studies_seen",
        (upstream, state.last_sync_at, state.last_study_date, state.studies_seen))])


async def _count_by(store: MetadataStore, sql: str, uids: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in _chunks(list(uids)):
        for uid, n in await store.fetchall(sql.format(marks=_marks(len(part))), part):
            out[str(uid)] = int(n)
    return out


async def study_instance_counts(store: MetadataStore, study_uids: Sequence[str]
                                ) -> dict[str, int]:
    """Instances this node knows per study (absent = study unknown)."""
    return await _count_by(
        store, "SELECT st.study_uid, count(i.id) FROM studies st "
        "LEFT JOIN series se ON se.study_id=st.id LEFT JOIN instances i ON i.series_id=se.id "
        "WHERE st.study_uid IN ({marks}) GROUP BY st.id", study_uids)


async def series_instance_counts(store: MetadataStore, series_uids: Sequence[str]
                                 ) -> dict[str, int]:
    return await _count_by(
        store, "SELECT se.series_uid, count(i.id) FROM series se "
        "LEFT JOIN instances i ON i.series_id=se.id "
        "WHERE se.series_uid IN ({marks}) GROUP BY se.id", series_uids)


async def known_sop_uids(store: MetadataStore, series_uid: str) -> set[str]:
    rows = await store.fetchall(
        "SELECT i.sop_uid FROM instances i JOIN series se ON se.id=i.series_id "
        "WHERE se.series_uid=?", (series_uid,))
    return {str(r[0]) for r in rows}


async def ingest_batch(store: MetadataStore, records: Sequence[InstanceRecord],
                       source: str) -> int:
    """Record many path-less instances in ONE transaction (a synced series at a time:
    one fsync instead of one per instance). Returns how many were new."""
    return await store.ingest_many(records, source)


# -- the scratch cache -------------------------------------------------------------
@dataclass(frozen=True)
class InstanceRef:
    """What retrieval needs to know about one indexed instance."""

    instance_id: int
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    path: str | None
    cached: bool  # path points into the scratch cache (evictable)


async def instance_refs(store: MetadataStore, sop_uids: Sequence[str]) -> list[InstanceRef]:
    out: list[InstanceRef] = []
    for part in _chunks(list(dict.fromkeys(sop_uids))):
        rows = await store.fetchall(
            "SELECT i.id, i.sop_uid, i.sop_class_uid, i.transfer_syntax, st.study_uid, "
            "se.series_uid, i.path, c.instance_id IS NOT NULL FROM instances i "
            "JOIN series se ON se.id=i.series_id JOIN studies st ON st.id=se.study_id "
            "LEFT JOIN cache_entries c ON c.instance_id=i.id "
            f"WHERE i.sop_uid IN ({_marks(len(part))})", part)
        out += [InstanceRef(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]),
                            str(r[5]), r[6], bool(r[7])) for r in rows]
    return out


@dataclass(frozen=True)
class CachedFile:
    instance_id: int
    rel: str            # relative to the data dir, starts with CACHE_PREFIX
    size: int
    sha256: str
    transfer_syntax: str


async def record_cached(store: MetadataStore, files: Sequence[CachedFile],
                        now: float | None = None) -> None:
    """Make retrieved files visible: path + cache entry, all in one transaction."""
    if not files:
        return
    now = time.time() if now is None else now
    statements: list[tuple[str, Sequence[object]]] = []
    for f in files:
        statements.append((
            "UPDATE instances SET path=?, size=?, sha256=?, "
            "transfer_syntax=coalesce(nullif(?, ''), transfer_syntax) WHERE id=?",
            (f.rel, f.size, f.sha256, f.transfer_syntax, f.instance_id)))
        statements.append((
            "INSERT INTO cache_entries(instance_id, size, last_access) VALUES (?,?,?) "
            "ON CONFLICT(instance_id) DO UPDATE SET size=excluded.size, "
            "last_access=excluded.last_access", (f.instance_id, f.size, now)))
    await store.run_in_transaction(statements)


async def touch(store: MetadataStore, instance_ids: Sequence[int],
                now: float | None = None) -> None:
    now = time.time() if now is None else now
    await store.run_in_transaction(
        [(f"UPDATE cache_entries SET last_access=? WHERE instance_id IN "
          f"({_marks(len(part))})", (now, *part)) for part in _chunks(list(instance_ids))])


async def cache_total(store: MetadataStore) -> int:
    row = await store.fetchone("SELECT coalesce(sum(size), 0) FROM cache_entries")
    return int(row[0]) if row else 0


async def lru_entries(store: MetadataStore, limit: int = 500,
                      offset: int = 0) -> list[tuple[int, int]]:
    """(instance id, size), least recently used first."""
    rows = await store.fetchall(
        "SELECT instance_id, size FROM cache_entries ORDER BY last_access, instance_id "
        "LIMIT ? OFFSET ?", (limit, offset))
    return [(int(r[0]), int(r[1])) for r in rows]


async def evict_rows(store: MetadataStore, instance_ids: Sequence[int]) -> list[str]:
    """Forget cached copies in one transaction; returns their paths so the caller can
    delete the files after the commit (a crash in between leaves only an orphan file,
    never a row pointing at nothing)."""
    paths: list[str] = []
    statements: list[tuple[str, Sequence[object]]] = []
    for part in _chunks(list(instance_ids)):
        marks = _marks(len(part))
        rows = await store.fetchall(
            f"SELECT i.path FROM instances i JOIN cache_entries c ON c.instance_id=i.id "
            f"WHERE i.id IN ({marks}) AND i.path IS NOT NULL", part)
        paths += [str(r[0]) for r in rows]
        statements.append((
            f"UPDATE instances SET path=NULL WHERE id IN ({marks}) AND id IN "
            f"(SELECT instance_id FROM cache_entries)", part))
        statements.append((f"DELETE FROM cache_entries WHERE instance_id IN ({marks})", part))
    await store.run_in_transaction(statements)
    return paths


async def cached_paths(store: MetadataStore) -> set[str]:
    rows = await store.fetchall(
        "SELECT i.path FROM instances i JOIN cache_entries c ON c.instance_id=i.id "
        "WHERE i.path IS NOT NULL")
    return {str(r[0]) for r in rows}
