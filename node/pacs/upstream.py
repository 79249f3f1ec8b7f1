"""Fronting an existing PACS: metadata sync on a schedule, images on demand.

Why: a hospital keeps its PACS unchanged; the node indexes it (C-FIND) so queries are
answered locally, and fetches images (C-GET) into a bounded scratch cache only when a
viewer or the federation asks for them. The PACS needs one change on its side only:
this node's AE title registered as a DICOM modality allowed to query and retrieve.

Serving sequence (for C-GET/C-MOVE to a viewer): ``pin`` the instances, then
``ensure_local``, stream the returned paths, then release the pin —
``resolve_for_serving`` does the first two for a list of index rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from ..config.model import UpstreamConfig
from ..store import cache_rows
from ..store.cache_rows import CACHE_PREFIX
from ..store.db import MetadataStore
from ..store.files import ObjectFiles
from .cache import Pin, ScratchCache
from .upstream_plan import Wanted, upstream_key
from .upstream_retrieve import retrieve
from .upstream_scu import (
    Abort,
    FindSession,
    Peer,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnavailable,
    call_blocking,
    echo,
)
from .upstream_sync import SyncReport, sync_pass

__all__ = ["UpstreamService", "SyncReport", "UpstreamError", "UpstreamUnavailable",
           "UpstreamRefused", "UpstreamConfigError", "Serving", "resolve_for_serving"]

log = logging.getLogger("medfed.upstream")

# Hard ceilings, in multiples of timeout_s (which bounds each single DIMSE message):
# one C-FIND whose answers stream in, and one series' C-GET.
FIND_CEILING = 20
SERIES_CEILING = 20


class UpstreamConfigError(UpstreamError):
    """The [upstream] section asks for something this node cannot do."""


class Auditor(Protocol):
    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: Any) -> Any: ...


class UpstreamService:
    def __init__(self, cfg: UpstreamConfig, *, store: MetadataStore, data_dir: Path,
                 own_ae_title: str, audit: Auditor) -> None:
        if cfg.retrieve != "get":
            raise UpstreamConfigError(
                f"[upstream] retrieve = {cfg.retrieve!r} is not supported: this node "
                f"retrieves by C-GET only; set retrieve = \"get\"")
        if not cfg.cache_max_mb > 0 or not cfg.timeout_s > 0:
            raise UpstreamConfigError("[upstream] cache_max_mb and timeout_s must be "
                                      "positive numbers")
        self.cfg = cfg
        self.store = store
        self.data_dir = data_dir
        self.audit = audit
        self.peer = Peer(cfg.ae_title, cfg.host, cfg.port,
                         cfg.calling_ae_title or own_ae_title, cfg.timeout_s)
        self.key = upstream_key(cfg.ae_title, cfg.host, cfg.port)
        self.cache = ScratchCache(store, data_dir, int(cfg.cache_max_mb * 1024 * 1024))
        self._sync_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._evict_pending = False
        self._stopping = asyncio.Event()
        self._chores: set[asyncio.Task[Any]] = set()
        self.cache.on_unpin = self._unpinned

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Sweep the cache and start the periodic sync (the first pass runs now)."""
        self._loop = asyncio.get_running_loop()
        await self.cache.sweep()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._periodic(), name="upstream-sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)
        self._loop = None

    async def _periodic(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sync_once()
            except UpstreamError as exc:
                log.warning("upstream sync failed: %s", exc)
            except Exception:
                log.exception("upstream sync failed unexpectedly")
            try:
                await asyncio.wait_for(self._stopping.wait(), self.cfg.sync_interval_s)
            except asyncio.TimeoutError:
                pass

    # -- metadata -----------------------------------------------------------------
    async def echo(self) -> None:
        await call_blocking(lambda: echo(self.peer), peer=self.peer, abort=Abort(),
                            what="C-ECHO", deadline_s=self.cfg.timeout_s * 2)

    async def sync_once(self, full: bool = False) -> SyncReport:
        """One sync pass (incremental unless ``full``); one association for all of it."""
        async with self._sync_lock:
            abort = Abort()
            try:
                session = await call_blocking(
                    lambda: FindSession(self.peer, abort), peer=self.peer, abort=abort,
                    what="opening an association", deadline_s=self.cfg.timeout_s * 2)
            except UpstreamError as exc:
                self._audit("upstream.sync", "failed", reason=type(exc).__name__)
                raise

            async def find(identifier: Any) -> list[Any]:
                return await call_blocking(
                    lambda: session.find(identifier), peer=self.peer, abort=abort,
                    what="a C-FIND", deadline_s=self.cfg.timeout_s * FIND_CEILING)

            try:
                report = await sync_pass(self.store, find, self.key, full=full,
                                         lookback_days=self.cfg.sync_lookback_days)
            except UpstreamError as exc:
                self._audit("upstream.sync", "failed", reason=type(exc).__name__)
                raise
            finally:
                await asyncio.to_thread(session.close)
        self._audit("upstream.sync", "ok", studies_new=report.studies_new,
                    series_new=report.series_new, instances_new=report.instances_new,
                    studies_seen=report.studies_seen, full=full)
        log.info("upstream sync: %d new studies, %d new instances (%d studies seen) in "
                 "%.1f s", report.studies_new, report.instances_new, report.studies_seen,
                 report.seconds)
        return report

    # -- images ---------------------------------------------------------------------
    def pin(self, instance_ids: Iterable[int]) -> Pin:
        """Keep these instances' cached files while they are served (thread-safe)."""
        return self.cache.pin(instance_ids)

    def unpin(self, instance_ids: Iterable[int]) -> None:
        self.cache.unpin(instance_ids)

    def _unpinned(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._evict_later)

    def _evict_later(self) -> None:
        if self._loop is None or self._evict_pending:
            return  # stopped, or a pass is already queued
        self._evict_pending = True
        task = asyncio.get_running_loop().create_task(self._evict_pass())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _evict_pass(self) -> None:
        self._evict_pending = False
        try:
            await self.cache.evict_to_bound()
        except Exception:
            log.exception("scratch cache eviction failed")

    def path(self, rel: str, objects_dir: Path | None = None) -> Path:
        """Absolute path of an ``instances.path`` value (cache or C-STORE'd file)."""
        if rel.startswith(CACHE_PREFIX):
            return self.cache.path(rel)
        return (objects_dir or self.data_dir / "objects") / rel

    async def ensure_local(self, sop_uids: Sequence[str], *,
                           objects_dir: Path | None = None) -> dict[str, Path]:
        """Paths of these instances, retrieving those not on disk (one C-GET per
        series). Instances the index does not know, or the PACS no longer has, are
        absent from the answer. The paths stay valid while the caller holds a pin."""
        refs = await cache_rows.instance_refs(self.store, sop_uids)
        with self.pin([r.instance_id for r in refs]):
            have, missing = await self._split_local(refs, objects_dir)
            if missing:
                have.update(await self._fetch(missing))
        return have

    async def _split_local(self, refs: list[cache_rows.InstanceRef],
                           objects_dir: Path | None) -> tuple[dict[str, Path], list[Wanted]]:
        async with self.cache.lock:  # nothing is evicted while we look
            refs = await cache_rows.instance_refs(self.store, [r.sop_uid for r in refs])
            have: dict[str, Path] = {}
            gone: list[int] = []
            missing: list[Wanted] = []
            for r in refs:
                path = self.path(r.path, objects_dir) if r.path else None
                if path is not None and path.is_file():
                    have[r.sop_uid] = path
                    continue
                if r.cached:
                    gone.append(r.instance_id)
                missing.append(r)
            if gone:
                self.cache.discard(await cache_rows.evict_rows(self.store, gone))
            touched = [r.instance_id for r in refs if r.cached and r.sop_uid in have]
            if touched:
                await cache_rows.touch(self.store, touched)
        return have, missing

    async def _fetch(self, missing: list[Wanted]) -> dict[str, Path]:
        started = time.monotonic()
        try:
            result = await retrieve(self.peer, self.cache, missing,
                                    per_series_deadline_s=self.cfg.timeout_s * SERIES_CEILING)
        except UpstreamError as exc:
            self._audit("upstream.retrieve", "failed", reason=type(exc).__name__,
                        requested=len(missing))
            raise
        by_id = {w.instance_id: w.sop_uid for w in missing}
        got = {by_id[f.instance_id]: self.cache.path(f.rel) for f in result.files}
        outcome = "ok" if len(got) == len(missing) else "partial"
        self._audit("upstream.retrieve", outcome, requested=len(missing), received=len(got),
                    refused=result.refused, seconds=round(time.monotonic() - started, 3))
        if result.write_failed:
            raise UpstreamError("retrieved instances could not be written to the scratch "
                                f"cache under {self.cache.files.root} (disk full or "
                                "not writable)")
        if outcome == "partial":
            log.warning("upstream delivered %d of %d requested instances", len(got),
                        len(missing))
        return got

    def _audit(self, action: str, outcome: str, **detail: Any) -> None:
        self.audit.append(action, self.peer.calling_ae_title, outcome,
                          subject=f"pacs:{self.key}", **detail)


class IndexRow(Protocol):
    sop_uid: str
    path: str | None


@dataclass
class Serving:
    """Paths to stream, in the order asked, pinned until ``release()``."""

    paths: list[Path]
    missing: list[str]   # SOP Instance UIDs neither on disk nor retrievable
    pin: Pin | None

    def release(self) -> None:
        if self.pin is not None:
            self.pin.release()

    def __enter__(self) -> "Serving":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


async def resolve_for_serving(service: UpstreamService | None, files: ObjectFiles,
                              rows: Sequence[IndexRow]) -> Serving:
    """Local files for index rows, fetching path-less (or cached) ones from the PACS.

    The caller streams ``paths`` and then calls ``release()`` (or uses ``with``),
    from any thread. Without an upstream, rows without a file are reported missing.
    """
    if service is None:
        return Serving([files.path(r.path) for r in rows if r.path],
                       [r.sop_uid for r in rows if not r.path], None)
    upstream = [r.sop_uid for r in rows if not r.path or r.path.startswith(CACHE_PREFIX)]
    refs = await cache_rows.instance_refs(service.store, upstream)
    pin = service.pin([r.instance_id for r in refs])
    try:
        fetched = await service.ensure_local(upstream, objects_dir=files.root)
    except BaseException:
        pin.release()
        raise
    paths: list[Path] = []
    missing: list[str] = []
    for r in rows:
        if r.sop_uid in fetched:
            paths.append(fetched[r.sop_uid])
        elif r.path and not r.path.startswith(CACHE_PREFIX):
            paths.append(files.path(r.path))
        else:
            missing.append(r.sop_uid)
    return Serving(paths, missing, pin)
