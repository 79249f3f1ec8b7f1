"""Keeps this site's DHT index in step with its store (NodeService "index-publisher").

Design: incremental, from the store's change log. Triggers in the schema append a row
to ``index_changes`` for every study or series added or removed. Every ``poll_s``
seconds the publisher compares the log's newest sequence number with its cursor (one
indexed read); when it moved, it recounts only the terms those changes touch (one
indexed query per term), stores the new term counts and its cursor in the store
(``index_terms``), and publishes what changed. The whole store is read once: the first
time (or when the federation's index or linkage key changes). Hashing runs off the
event loop. Publishing is rate-limited (``publish_rate`` records per second), new terms
first; what a round leaves is carried over, and a restart continues from the stored
terms and cursor instead of starting again.

Bounds (documented for the README):
- a new study is findable within ``poll_s`` (default 5 s) plus one DHT store round
  (one lookup + k STOREs, each RPC bounded by the DHT rpc_timeout), unless a first
  publish is still working through its backlog;
- records live ``2 x index_republish_s`` (at least 4 DHT maintenance ticks) and the DHT
  re-stores them on the then-closest nodes at half-life, so a node that left silently
  drops out of plans within that time;
- withdrawal publishes a count-0 record (newest per publisher wins at every holder,
  readers ignore count 0) and then stops republishing it, so removed data stops being
  planned within one poll, not when the old record would have expired.
Records carry the node id (from the signature) and a coarse count only — never PHI.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.dht.index_keys import IndexKeys
from node.index.terms import PATIENT, IndexTerms, TermEntry, coarse_count, index_terms, term_entries
from node.store import index_rows

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("medfed.index")


class IndexPublisherError(RuntimeError):
    """The index publisher was used before its node started (or on a stand-alone node)."""


async def local_terms(node: "Node") -> IndexTerms:
    """The terms ``node`` holds right now, read from its whole store (a fallback for
    when the publisher is not running; the publisher itself never does this twice)."""
    if node.membership is None:
        raise IndexPublisherError("this node has not joined a federation: it has no index key")
    secrets = node.membership.secrets
    await node.store.ensure_pseudonyms(secrets.linkage_key)
    rows = await index_rows.all_term_rows(node.store)
    return await asyncio.to_thread(index_terms, rows, IndexKeys(secrets.index_key),
                                   secrets.linkage_key)


def keys_fingerprint(index_key: bytes, linkage_key: bytes) -> str:
    """Names the key pair the stored terms were made with (not the keys themselves)."""
    return hmac.new(index_key + linkage_key, b"medfed-index-terms", hashlib.sha256
                    ).hexdigest()[:32]


@dataclass(frozen=True)
class SyncReport:
    terms: int          # terms the site holds now
    published: int      # new or changed terms stored in the DHT this round
    withdrawn: int      # vanished terms replaced by a count-0 record
    failed: int         # terms that reached no holder (retried next poll)
    skipped_rows: int   # store rows whose values cannot be index keys
    duration_s: float
    pending: int = 0    # due terms left for later rounds by the rate limit
    full: bool = False  # this round read every term (first publish / key change)


class IndexPublisher:
    name = "index-publisher"

    def __init__(self, *, poll_s: float = 5.0, republish_s: float | None = None,
                 parallel: int = 8, publish_rate: float = 200.0, join_dht: bool = True) -> None:
        """``join_dht``: join the DHT through the roster when its routing table is empty
        (a node started by ``medfed run``); False when the caller joins it (the
        simulator's grid joins nodes in waves and on revive): a round before that is
        skipped, as publishing into an empty routing table reaches nobody."""
        if poll_s <= 0 or parallel < 1 or (republish_s is not None and republish_s <= 0) \
                or publish_rate <= 0:
            raise ValueError("index publisher: poll_s, republish_s and publish_rate must be "
                             "> 0 and parallel >= 1")
        self.poll_s = poll_s
        self._republish_s = republish_s
        self._parallel = parallel
        self._join_dht = join_dht
        self.round_cap = max(parallel, int(publish_rate * poll_s))  # records per round
        self._node: Node | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._published: dict[bytes, int] = {}      # what THIS process registered in the DHT
        self._terms: dict[bytes, int] = {}          # coarse counts now (0 = to withdraw)
        self._earlier: dict[bytes, int | None] = {}  # published by any run (from the store)
        self._seq = -1
        self._fingerprint = ""
        self._loaded = False
        self._retry = False
        self._backlog = 0
        self._full = False
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
    def joins_dht(self) -> bool:
        return self._join_dht

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
        """Terms (key → coarse count) as of the last round."""
        return {k: c for k, c in self._terms.items() if c > 0}

    async def current_counts(self) -> Mapping[bytes, int]:
        """Terms the store holds now (brought up to date from the change log; not
        published — the loop does that)."""
        node = self._require()
        async with self._lock:
            await self._refresh(node)
        return self.local_counts()

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
                joined = len(node.dht.routing) > 0
                if not joined and self._join_dht:
                    await node.bootstrap_dht()
                    joined = True
                if joined and await self._due(node):
                    await self.sync_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep publishing; the next poll retries
                log.warning("index publishing failed this round (%s); retrying in %.0f s",
                            type(exc).__name__, self.poll_s)
                self._retry = True
            await asyncio.sleep(self.poll_s)

    async def _due(self, node: "Node") -> bool:
        if self._retry or self._backlog or not self._loaded:
            return True
        return await index_rows.change_cursor(node.store) != self._seq

    async def _refresh(self, node: "Node") -> int:
        """Bring ``_terms`` up to date with the store; returns rows that cannot be keys.
        Reads everything only on the first run or after a key change."""
        assert node.membership is not None
        store = node.store
        secrets = node.membership.secrets
        keys = IndexKeys(secrets.index_key)
        fingerprint = keys_fingerprint(secrets.index_key, secrets.linkage_key)
        await store.ensure_pseudonyms(secrets.linkage_key)
        if not self._loaded:
            self._fingerprint, self._seq, stored = await index_rows.load_state(store)
            self._terms = {k: t.count for k, t in stored.items()}
            self._earlier = {k: t.published for k, t in stored.items()}
            self._loaded = True
        skipped = 0
        if self._fingerprint != fingerprint:
            self._full = True
            seq = await index_rows.change_cursor(store)
            rows = await index_rows.all_term_rows(store)
            entries, skipped = await asyncio.to_thread(term_entries, rows, keys,
                                                       secrets.linkage_key)
            fresh = {k: (e.kind, e.ref, coarse_count(e.exact)) for k, e in entries.items()}
            await index_rows.save_state(store, fresh, seq=seq, fingerprint=fingerprint,
                                        replace=True)
            self._terms = {k: 0 for k in self._terms} | {k: v[2] for k, v in fresh.items()}
            self._seq, self._fingerprint = seq, fingerprint
            return skipped
        while True:
            changes = await index_rows.changes_after(store, self._seq)
            if changes.seq == self._seq:
                return skipped
            rows = await index_rows.term_rows_for(store, changes)
            entries, more = await asyncio.to_thread(term_entries, rows, keys,
                                                    secrets.linkage_key)
            skipped += more
            covered = {e.ref for e in entries.values() if e.kind == PATIENT}
            gone = [str(p) for p in changes.patients if str(p) not in covered]
            for ref, key in (await index_rows.patient_terms(store, gone)).items():
                entries[key] = TermEntry(PATIENT, ref, 0)
            update = {k: (e.kind, e.ref, coarse_count(e.exact)) for k, e in entries.items()}
            await index_rows.save_state(store, update, seq=changes.seq, fingerprint=fingerprint)
            self._terms.update({k: v[2] for k, v in update.items()})
            self._seq = changes.seq

    def _due_records(self) -> dict[bytes, int]:
        """Terms to (re)publish or withdraw, new ones first, at most one round's worth."""
        due = {k: c for k, c in self._terms.items()
               if (c > 0 and self._published.get(k) != c)
               or (c == 0 and (k in self._published or self._earlier.get(k)))}
        for k in [k for k, c in self._terms.items() if c == 0 and k not in due]:
            del self._terms[k]  # never went out: nothing to withdraw
        order = sorted(due, key=lambda k: k in self._earlier)
        self._backlog = max(0, len(order) - self.round_cap)
        return {k: due[k] for k in order[:self.round_cap]}

    async def sync_now(self) -> SyncReport:
        """Bring the DHT in step with the store; safe to call any time (tests and the
        CLI use it to avoid waiting for the next poll)."""
        node = self._require()
        async with self._lock:
            started = asyncio.get_running_loop().time()
            self._full = False
            skipped = await self._refresh(node)
            records = self._due_records()
            ok = await self._publish_all(records)
            done: dict[bytes, int] = {}
            for key, count in records.items():
                if key in ok:
                    done[key] = count
                    if count == 0:
                        node.dht.unpublish(key)  # type: ignore[union-attr]
                        self._published.pop(key, None)
                        self._terms.pop(key, None)
                        self._earlier.pop(key, None)
                    else:
                        self._published[key] = count
                        self._earlier[key] = count
                elif count > 0 and key not in self._published:  # never placed: retried by
                    node.dht.unpublish(key)  # type: ignore[union-attr]  # us, not the DHT
            await index_rows.mark_published(node.store, done)
            failed = len(records) - len(ok)
            self._retry = failed > 0
            withdrawn = sum(1 for c in done.values() if c == 0)
            report = SyncReport(sum(1 for c in self._terms.values() if c > 0),
                                len(done) - withdrawn, withdrawn, failed, skipped,
                                asyncio.get_running_loop().time() - started, self._backlog, self._full)
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
