"""Scratch cache of instances retrieved from the upstream PACS, with a size bound.

Why: a node fronting a PACS keeps only metadata; images are fetched when someone asks
and kept for a while so repeated views do not hit the PACS again. The bound is held by
evicting the least recently used entries — never one that is pinned, i.e. being
streamed to a viewer right now. Pins live in memory (a crash ends all streams anyway).

Files are written atomically under ``<data_dir>/cache`` and become visible only when
their row is committed; eviction commits first and deletes the file afterwards, so a
row never points at a missing or partial file. Orphans left by a crash are swept at
start. Pinned entries may hold the cache above its bound for as long as they are
pinned; the next eviction pass after unpinning brings it back under.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..store import cache_rows
from ..store.cache_rows import CACHE_PREFIX, CachedFile
from ..store.db import MetadataStore
from ..store.files import ObjectFiles

log = logging.getLogger("medfed.cache")


class Pin:
    """Held while instances are being served; release (or leave the ``with``) once."""

    def __init__(self, cache: "ScratchCache", instance_ids: Iterable[int]) -> None:
        self._cache = cache
        self._ids = list(instance_ids)
        self._held = True
        cache._add_pins(self._ids)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._cache.unpin(self._ids)

    def __enter__(self) -> "Pin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ScratchCache:
    def __init__(self, store: MetadataStore, data_dir: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("the cache size bound must be positive ([upstream] cache_max_mb)")
        self.store = store
        self.data_dir = data_dir
        self.max_bytes = max_bytes
        self.files = ObjectFiles(data_dir / CACHE_PREFIX.rstrip("/"))
        # Serialises "which cached files are usable" against eviction, on the event loop.
        self.lock = asyncio.Lock()
        self._pins: Counter[int] = Counter()
        self._pin_lock = threading.Lock()
        # Called (from any thread) after pins were released: the owner schedules an
        # eviction pass on its loop, since entries held above the bound may now go.
        self.on_unpin: Callable[[], None] | None = None

    # -- pins (thread-safe: viewers are served from pynetdicom threads) -----------
    def pin(self, instance_ids: Iterable[int]) -> Pin:
        return Pin(self, instance_ids)

    def _add_pins(self, instance_ids: Sequence[int]) -> None:
        with self._pin_lock:
            self._pins.update(instance_ids)

    def unpin(self, instance_ids: Iterable[int]) -> None:
        with self._pin_lock:
            for i in instance_ids:
                if self._pins[i] <= 1:
                    del self._pins[i]
                else:
                    self._pins[i] -= 1
        if self.on_unpin is not None:
            self.on_unpin()

    def pinned(self) -> set[int]:
        with self._pin_lock:
            return set(self._pins)

    # -- files ----------------------------------------------------------------
    def path(self, rel: str) -> Path:
        """Absolute path of a cache-relative ``instances.path`` value."""
        return self.data_dir / rel

    def write(self, study_uid: str, series_uid: str, sop_uid: str,
              data: bytes) -> tuple[str, int, str]:
        """Write one retrieved Part-10 file (blocking); returns (rel, size, sha256)."""
        inner = self.files.relpath(study_uid, series_uid, sop_uid)
        size, sha = self.files.write_atomic(inner, (data,))
        return CACHE_PREFIX + inner, size, sha

    def discard(self, rels: Iterable[str]) -> None:
        for rel in rels:
            if rel.startswith(CACHE_PREFIX):
                self.files.remove(rel[len(CACHE_PREFIX):])

    # -- rows -------------------------------------------------------------------
    async def record(self, files: Sequence[CachedFile]) -> int:
        """Make retrieved files visible, then hold the bound; returns evictions."""
        async with self.lock:
            try:
                await cache_rows.record_cached(self.store, files)
            except BaseException:
                self.discard(f.rel for f in files)
                raise
            return await self._evict_locked()

    async def evict_to_bound(self) -> int:
        async with self.lock:
            return await self._evict_locked()

    async def _evict_locked(self) -> int:
        excess = await cache_rows.cache_total(self.store) - self.max_bytes
        if excess <= 0:
            return 0
        pinned = self.pinned()
        victims: list[int] = []
        offset = 0
        while excess > 0:
            page = await cache_rows.lru_entries(self.store, limit=500, offset=offset)
            if not page:
                break
            offset += len(page)
            for instance_id, size in page:
                if instance_id in pinned:
                    continue
                victims.append(instance_id)
                excess -= size
                if excess <= 0:
                    break
        if excess > 0:
            log.warning("scratch cache is over its bound by %d bytes: the rest is pinned by "
                        "transfers in progress", excess)
        if victims:
            self.discard(await cache_rows.evict_rows(self.store, victims))
        return len(victims)

    async def usage(self) -> int:
        return await cache_rows.cache_total(self.store)

    async def sweep(self) -> int:
        """Delete temp files and files no row points at (left by a crash); returns count."""
        async with self.lock:
            removed = await asyncio.to_thread(self.files.sweep_temp_files)
            known = await cache_rows.cached_paths(self.store)
            removed += await asyncio.to_thread(self._remove_orphans, known)
        if removed:
            log.info("removed %d leftover files from the scratch cache", removed)
        return removed

    def _remove_orphans(self, known: set[str]) -> int:
        root = self.files.root
        if not root.exists():
            return 0
        count = 0
        for path in root.rglob("*.dcm"):
            rel = CACHE_PREFIX + path.relative_to(root).as_posix()
            if rel not in known:
                path.unlink(missing_ok=True)
                count += 1
        return count
