"""Keeps this site's DHT index in step with its store (NodeService "index-publisher").

Design: a periodic diff, not event hooks. Every ``poll_s`` seconds a cheap marker
(max ids and row counts of patients/studies/series/instances) is read; when it moved —
or every ``index_republish_s`` regardless — the index terms are recomputed from SQL and
compared with what is published: new or changed terms are published, vanished ones are
withdrawn. So ingest, upstream sync and deletion all reach the DHT the same way, and a
crash loses nothing (the store is the truth; the next diff repairs the index).

Bounds (documented for the README):
- a new study is findable within ``poll_s`` (default 5 s) plus one DHT store round
  (one lookup + k STOREs, each RPC bounded by the DHT rpc_timeout);
- records live ``2 × index_republish_s`` (at least 4 DHT maintenance ticks) and the DHT
  re-stores them on the then-closest nodes at half-life, so a node that left silently
  drops out of plans within that time;
- withdrawal publishes a count-0 record (newest per publisher wins at every holder,
  readers ignore count 0) and then stops republishing it, so removed data stops being
  planned within one poll, not when the old record would have expired.
Records carry the node id (from the signature) and a coarse count only — never PHI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.dht.index_keys import IndexKeys
from node.index.terms import (IndexTerms, ModalityMonthRow, ModalityPartRow, PatientRow,
                              TermRows, index_terms)
from node.store.db import MetadataStore

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("medfed.index")

_MARKER_SQL = (
    "SELECT (SELECT coalesce(max(id), 0) FROM instances), "
    "(SELECT coalesce(max(id), 0) FROM patients), (SELECT count(*) FROM patients), "
    "(SELECT coalesce(max(id), 0) FROM studies), (SELECT count(*) FROM studies), "
    "(SELECT coalesce(max(id), 0) FROM series), (SELECT count(*) FROM series)")
_PATIENTS_SQL = (
    "SELECT ph.pid, ph.issuer, count(st.id) FROM patient_phi ph "
    "JOIN studies st ON st.patient_id = ph.patient_id GROUP BY ph.patient_id")
_PARTS_SQL = (
    "SELECT modality, body_part, count(DISTINCT study_id) FROM series "
    "GROUP BY modality, body_part")
_MONTHS_SQL = (
    "SELECT se.modality, substr(st.study_date, 1, 6), count(DISTINCT st.id) FROM series se "
    "JOIN studies st ON st.id = se.study_id GROUP BY se.modality, substr(st.study_date, 1, 6)")


class IndexPublisherError(RuntimeError):
    """The index publisher was used before its node started (or on a stand-alone node)."""


async def store_marker(store: MetadataStore) -> tuple[int, ...]:
    """Changes whenever rows are added or removed at patient/study/series/instance level."""
    row = await store.fetchone(_MARKER_SQL)
    return tuple(int(v) for v in row) if row else ()


async def read_term_rows(store: MetadataStore) -> TermRows:
    patients = tuple(PatientRow(str(p), str(i), int(n))
                     for p, i, n in await store.fetchall(_PATIENTS_SQL))
    parts = tuple(ModalityPartRow(str(m), str(b), int(n))
                  for m, b, n in await store.fetchall(_PARTS_SQL))
    months = tuple(ModalityMonthRow(str(m), str(d or ""), int(n))
                   for m, d, n in await store.fetchall(_MONTHS_SQL))
    return TermRows(patients, parts, months)


async def local_terms(node: "Node") -> IndexTerms:
    """The terms ``node`` holds right now, straight from its store."""
    if node.membership is None:
        raise IndexPublisherError("this node has not joined a federation: it has no index key")
    secrets = node.membership.secrets
    return index_terms(await read_term_rows(node.store), IndexKeys(secrets.index_key),
                       secrets.linkage_key)


@dataclass(frozen=True)
class SyncReport:
    terms: int          # terms the site holds now
    published: int      # new or changed terms stored in the DHT this round
    withdrawn: int      # vanished terms replaced by a count-0 record
    failed: int         # terms that reached no holder (retried next poll)
    skipped_rows: int   # store rows whose values cannot be index keys
    duration_s: float


class IndexPublisher:
    name = "index-publisher"

    def __init__(self, *, poll_s: float = 5.0, republish_s: float | None = None,
                 parallel: int = 8) -> None:
        if poll_s <= 0 or parallel < 1 or (republish_s is not None and republish_s <= 0):
            raise ValueError("index publisher: poll_s and republish_s must be > 0 and "
                             "parallel >= 1")
        self.poll_s = poll_s
        self._republish_s = republish_s
        self._parallel = parallel
        self._node: Node | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._published: dict[bytes, int] = {}
        self._local: dict[bytes, int] = {}
        self._marker: tuple[int, ...] | None = None
        self._retry = False
        self._next_full = 0.0
        self.last_report: SyncReport | None = None

    # -- lifecycle -------------------------------------------------------------
    async def start(self, node: "Node") -> None:
        if node.dht is None or node.membership is None:
            log.info("index publisher idle: this node has not joined a federation")
            return
        self._node = node
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task, self._node = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._node is not None

    @property
    def republish_s(self) -> float:
        if self._republish_s is not None:
            return self._republish_s
        return self._require().cfg.federation.index_republish_s

    def record_ttl_s(self) -> float:
        """Twice the republish period, so one missed republish does not drop a record."""
        dht = self._require().dht
        assert dht is not None
        return min(max(2 * self.republish_s, 4 * dht.config.maintenance_interval),
                   dht.config.max_record_ttl)

    def local_counts(self) -> Mapping[bytes, int]:
        """Terms (key → coarse count) as of the last diff."""
        return dict(self._local)

    async def current_counts(self) -> Mapping[bytes, int]:
        """Terms the store holds now: the last diff's when the store has not changed
        since, else recomputed (not published — the loop does that)."""
        node = self._require()
        if self._marker is not None and await store_marker(node.store) == self._marker:
            return dict(self._local)
        return (await local_terms(node)).counts

    def _require(self) -> "Node":
        if self._node is None:
            raise IndexPublisherError("index publisher is not running (node not started, "
                                      "or not a federation member)")
        return self._node

    # -- the loop --------------------------------------------------------------
    async def _run(self) -> None:
        node = self._require()
        assert node.dht is not None
        while True:
            try:
                if len(node.dht.routing) == 0:
                    await node.bootstrap_dht()
                if await self._due(node):
                    await self.sync_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep publishing; the next poll retries
                log.warning("index publishing failed this round (%s); retrying in %.0f s",
                            type(exc).__name__, self.poll_s)
                self._retry = True
            await asyncio.sleep(self.poll_s)

    async def _due(self, node: "Node") -> bool:
        if self._retry or time.monotonic() >= self._next_full:
            return True
        return await store_marker(node.store) != self._marker

    async def sync_now(self) -> SyncReport:
        """Diff the store against what is published and fix the DHT; safe to call any
        time (tests and the CLI use it to avoid waiting for the next poll)."""
        node = self._require()
        async with self._lock:
            started = time.monotonic()
            marker = await store_marker(node.store)
            terms = await local_terms(node)
            wanted = terms.counts
            changed = {k: c for k, c in wanted.items() if self._published.get(k) != c}
            vanished = {k: 0 for k in self._published if k not in wanted}
            ok = await self._publish_all({**changed, **vanished})
            for key in vanished:  # a failed withdrawal stays due (count 0) and is retried
                if key in ok:
                    node.dht.unpublish(key)  # type: ignore[union-attr]
                    del self._published[key]
                else:
                    self._published[key] = 0
            for key in changed:
                if key in ok:
                    self._published[key] = changed[key]
                elif key not in self._published:  # never placed: retried by the next diff,
                    node.dht.unpublish(key)  # type: ignore[union-attr]  # not by the DHT
            failed = len(changed) + len(vanished) - len(ok)
            self._local, self._marker, self._retry = dict(wanted), marker, failed > 0
            self._next_full = started + self.republish_s
            report = SyncReport(len(wanted), len(ok - vanished.keys()), len(ok & vanished.keys()),
                                failed, terms.skipped, time.monotonic() - started)
            self.last_report = report
            if failed:
                log.warning("%d index records reached no DHT holder; retrying in %.0f s",
                            failed, self.poll_s)
            return report

    async def _publish_all(self, records: Mapping[bytes, int]) -> set[bytes]:
        node = self._require()
        dht = node.dht
        assert dht is not None and node.membership is not None
        alone = len(node.membership.roster.current.active()) <= 1
        ttl = self.record_ttl_s()
        gate = asyncio.Semaphore(self._parallel)

        async def one(key: bytes, count: int) -> bytes | None:
            async with gate:
                try:
                    result = await dht.publish(key, count, ttl=ttl)
                except Exception as exc:
                    log.info("publishing an index record failed (%s)", type(exc).__name__)
                    return None
            return key if result.accepted > 0 or (alone and result.stored_locally) else None

        done = await asyncio.gather(*(one(k, c) for k, c in records.items()))
        return {k for k in done if k is not None}
