"""The "publisher" node service: turns idle series into shared, replicated bundles.

Driven by the durable ``publish`` jobs the ingest path queues (ref = series UID, due
once the series has been idle). Steps, each idempotent and recorded in the catalogue
before the next starts, so a crash resumes where it stopped (the job stays pending
until the last step is done):

1. build   de-identify every instance (federation keys), bundle them in slice order
           under a fresh key into ``data_dir/bundles/<bundle id>.mfb``
2. keyed   split the key k-of-n to share holders with a release policy derived from
           the site policy (``keyshare.distribute``)
3. replicated  push r encrypted replicas (``replica.place``)
4. published   DHT records: ``bundle_key(bundle_id)`` (owner, instance count),
           ``bundle_key("series:" + keyed series UID)`` → bundle id (so a query result
           can be fetched while the owner is down) and one record per replica holder.

Instances the de-identifier refuses (burned-in annotation unless allowed) are left out
and counted in the audit entry; a series with nothing left is not published.

Protection is sized from the current membership (``node.sharing.protection``): k-of-n and
r shrink to what the federation can hold (with a warning in the log and `medfed status`),
and bundles published below the configured sizes are re-published when members join.
Every failed step logs and records its real reason (``last_errors``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.bundle.stream import new_bundle_key
from node.deid.actions import DeidKeys, DeidOptions, keyed_uid
from node.dht.index_keys import IndexKeys
from node.dht.records import PayloadKind
from node.keyshare.release_policy import ReleasePolicy
from node.net.assertion import PURPOSES, ROLES
from node.policy import Level, Policy, policy_from_dict
from node.sharing.build import (
    build_bundle_file, content_digest, deidentified_bytes, ordered_sources, series_sources,
    sweep_partial_bundles,
)
from node.sharing.catalog import Catalog, CatalogEntry
from node.sharing.owner import FETCH_PATH, OwnerFetch
from node.sharing.protection import Protection, protection_for

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("medfed.publisher")

RELEASE_TTL_S = 365 * 24 * 3600
BUNDLES_DIR = "bundles"
CATALOG_FILE = "sharing.sqlite"
SERIES_LABEL = "series:"


class PublishRefused(Exception):
    """Nothing in the series may leave the site (every instance was refused)."""


class PublishError(Exception):
    """A publish step failed; the job is retried later (the message says which step)."""


MAX_ERRORS = 20


def failure_reason(exc: BaseException) -> str:
    """The real reason of a failed step, for the log and `medfed status`. Our own errors
    carry ids and counts only; anything else is named by type (its text may quote data)."""
    from node.keyshare.gather import KeyUnavailable
    from node.keyshare.service import SharingError
    from node.net.errors import PeerError
    from node.replica.store import ReplicaError

    if isinstance(exc, (PublishError, SharingError, PeerError, KeyUnavailable, ReplicaError)):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or 'I/O error'}"
    return f"{type(exc).__name__} (internal error; see the traceback at DEBUG level)"


@dataclass(frozen=True)
class PublisherSettings:
    poll_s: float = 5.0
    retry_s: float = 60.0
    deid: DeidOptions = DeidOptions()
    ttl_s: int = RELEASE_TTL_S


def release_terms(policy: Policy) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Sites, roles and purposes a share holder may release the key to.

    A release policy is one product sites × roles × purposes, while the site policy is an
    ordered rule list; this is the union over the rules that release images
    (de-identified or identified). It may cover combinations no single rule grants —
    the owner path always applies the exact rules; share holders see only this.
    Empty when no rule releases images (then nothing is distributed).
    """
    sites: set[str] = set()
    roles: set[str] = set()
    purposes: set[str] = set()
    for rule in policy.rules:
        if rule.level in (Level.DEIDENTIFIED, Level.IDENTIFIED):
            sites.update(rule.sites)
            roles.update(ROLES if "*" in rule.roles else rule.roles)
            purposes.update(PURPOSES if "*" in rule.purposes else rule.purposes)
    if "*" in sites:
        sites = {"*"}
    return tuple(sorted(sites)), tuple(r for r in ROLES if r in roles), tuple(p for p in PURPOSES if p in purposes)


def series_index_key(keys: IndexKeys, keyed_series_uid: str) -> bytes:
    return keys.bundle_key(SERIES_LABEL + keyed_series_uid)


def replica_index_key(keys: IndexKeys, bundle_id: str, slot: int) -> bytes:
    return keys.bundle_key(f"{bundle_id}:replica:{slot}")


class PublisherService:
    name = "publisher"

    def __init__(self, settings: PublisherSettings = PublisherSettings(), *, run_jobs: bool = True) -> None:
        self.settings = settings
        self.run_jobs = run_jobs
        self.catalog: Catalog | None = None
        self._node: Node | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._owner: OwnerFetch | None = None
        self.last_errors: list[tuple[float, str]] = []   # (wall time, reason), newest last
        self._warned = ""
        self._sized_for = 0          # roster version the published bundles were checked at

    # -- lifecycle -------------------------------------------------------------
    def register_routes(self, node: "Node") -> None:
        assert node.peer is not None
        node.peer.add_route("POST", FETCH_PATH, self._fetch)

    async def _fetch(self, call: Any) -> Any:
        if self._owner is None:
            from node.net.reqsign import RequestRefused
            raise RequestRefused(503, "starting", "the publisher is not started yet; retry")
        return await self._owner.handle(call)

    async def start(self, node: "Node") -> None:
        self._node = node
        swept = sweep_partial_bundles(self.bundles_dir)
        if swept:
            log.info("removed %d partial bundle files left by an earlier crash", swept)
        self.catalog = await Catalog(node.cfg.data_dir / CATALOG_FILE).open()
        self._owner = OwnerFetch(node, self.catalog, self.bundles_dir)
        replica = node.service("replica")
        if replica is not None:
            replica.set_bundle_source(self.bundle_path, self._owner.authorize_bundle)  # type: ignore[attr-defined]
        if self.run_jobs:
            self._task = asyncio.create_task(self._loop(), name="medfed-publisher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._owner = None
        catalog, self.catalog = self.catalog, None
        if catalog is not None:
            await catalog.close()

    @property
    def node(self) -> "Node":
        if self._node is None:
            raise RuntimeError("the publisher is not started")
        return self._node

    @property
    def bundles_dir(self) -> Path:
        return self.node.cfg.data_dir / BUNDLES_DIR

    def bundle_path(self, bundle_id: str) -> Path | None:
        """Where this node's own bundle file is (the replica service serves it from here)."""
        if len(bundle_id) != 64 or not all(c in "0123456789abcdef" for c in bundle_id):
            return None
        path = self.bundles_dir / f"{bundle_id}.mfb"
        return path if path.is_file() else None

    # -- the job loop ------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                await self.grow_protection()
                await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the loop alive; the job records the error
                log.error("publisher pass failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.poll_s)

    async def run_due(self) -> int:
        """Process every due publish job once; returns how many finished."""
        done = 0
        for job_id, series_uid in await self.node.store.due_jobs("publish"):
            try:
                await self.publish_series(series_uid)
            except PublishRefused as exc:
                self._audit("publish.refused", series_uid, str(exc))
                await self.node.store.finish_job(job_id, True)
            except Exception as exc:
                reason = failure_reason(exc)
                log.warning("publishing a series failed, will retry in %.0f s: %s",
                            self.settings.retry_s, reason)
                self.last_errors = (self.last_errors + [(time.time(), reason)])[-MAX_ERRORS:]
                await self.node.store.finish_job(job_id, False, reason, retry_in=self.settings.retry_s)
            else:
                await self.node.store.finish_job(job_id, True)
                done += 1
        return done

    # -- protection sized from membership -------------------------------------------
    def protection(self) -> Protection:
        """k-of-n and r for a bundle published now (warns once per change)."""
        fed = self.node.cfg.federation
        members = (len(self.node.membership.roster.current.active())
                   if self.node.membership is not None else 0)
        sized = protection_for(members, fed.shares_k, fed.shares_n, fed.replicas)
        warning = sized.warning()
        if warning and warning != self._warned:
            log.warning("KEY PROTECTION: %s", warning)
        self._warned = warning
        return sized

    async def grow_protection(self) -> int:
        """After the roster changed: re-publish bundles split or replicated below what the
        federation can hold now. Returns how many were queued."""
        membership = self.node.membership
        if self.catalog is None or membership is None:
            return 0
        version = membership.roster.current.version
        if version == self._sized_for:
            return 0
        self._sized_for = version
        target = self.protection()
        if not target.possible:
            return 0
        queued = 0
        for entry in await self.catalog.entries():
            if not entry.reached("published"):
                continue
            if len(entry.share_holders) >= target.n and len(entry.replica_holders) >= target.replicas:
                continue
            await self.catalog.advance(entry.bundle_id, "built")
            await self.node.store.enqueue("publish", entry.series_uid)
            queued += 1
        if queued:
            log.info("membership grew: re-sharing %d bundle(s) up to %d-of-%d, %d replica(s)",
                     queued, target.k, target.n, target.replicas)
        return queued

    def _audit(self, action: str, series_uid: str, outcome: str, **detail: Any) -> None:
        if self.node.audit is not None:
            keyed = self._keyed(series_uid)
            self.node.audit.append(action, self.node.node_id[:16], outcome, keyed, **detail)

    def _secrets(self) -> Any:
        membership = self.node.membership
        if membership is None or membership.secrets is None:
            raise PublishError("this node has no federation secrets; join a federation first")
        return membership.secrets

    def _keyed(self, series_uid: str) -> str:
        return keyed_uid(series_uid, self._secrets().uid_key)

    # -- the steps ---------------------------------------------------------------
    async def publish_series(self, series_uid: str) -> CatalogEntry:
        """Run (or resume) every step for one series; returns the final catalogue entry."""
        assert self.catalog is not None
        async with self._lock:
            sources = await series_sources(self.node.store, self.node.files, series_uid)
            digest = content_digest(sources)
            entry = await self.catalog.by_series(series_uid)
            if entry is None or entry.content != digest or self.bundle_path(entry.bundle_id) is None:
                entry = await self._build(series_uid, sources, digest, previous=entry)
            if not entry.reached("keyed"):
                entry = await self._distribute(entry)
            if not entry.reached("replicated"):
                entry = await self._replicate(entry)
            if not entry.reached("published"):
                entry = await self._announce(entry)
            return entry

    async def _build(self, series_uid: str, sources: list[Any], digest: str,
                     previous: CatalogEntry | None) -> CatalogEntry:
        assert self.catalog is not None
        secrets = self._secrets()
        keys = DeidKeys(uid_key=secrets.uid_key, patient_key=secrets.linkage_key)
        key = new_bundle_key()
        options = self.settings.deid

        def build() -> Any:
            ordered = ordered_sources(sources)
            return build_bundle_file(ordered, self.bundles_dir, key,
                                     lambda path: deidentified_bytes(path, keys, options))

        result = await asyncio.to_thread(build)
        if result.info.instances == 0:
            result.path.unlink(missing_ok=True)
            raise PublishRefused(f"all {result.refused} instance(s) refused by de-identification")
        entry = CatalogEntry(series_uid, keyed_uid(series_uid, secrets.uid_key), result.info.bundle_id,
                             key, digest, result.info.stored_bytes, result.info.plain_bytes,
                             result.info.instances)
        await self.catalog.put_built(entry)
        if previous is not None and previous.bundle_id != entry.bundle_id:
            await self._retire(previous)
        self._audit("publish.build", series_uid, "ok", bundle=entry.bundle_id,
                    instances=entry.instances, refused=result.refused, raw_bytes=result.raw_bytes,
                    bundle_bytes=entry.size)
        return entry

    async def _retire(self, old: CatalogEntry) -> None:
        """The series changed: its old bundle is no longer announced or kept here."""
        (self.bundles_dir / f"{old.bundle_id}.mfb").unlink(missing_ok=True)
        dht = self.node.dht
        if dht is not None:
            keys = IndexKeys(self._secrets().index_key)
            for key in [keys.bundle_key(old.bundle_id)] + [
                    replica_index_key(keys, old.bundle_id, i) for i in range(len(old.replica_holders))]:
                dht.unpublish(key)

    def _service(self, name: str) -> Any:
        service = self.node.service(name)
        if service is None:
            raise PublishError(f"the {name!r} service is not running on this node")
        return service

    async def _distribute(self, entry: CatalogEntry) -> CatalogEntry:
        assert self.catalog is not None
        sites, roles, purposes = release_terms(policy_from_dict(self.node.cfg.policy))
        if not (sites and roles and purposes):
            raise PublishRefused("the site policy releases images to nobody; nothing to share")
        now = int(self.node.transport.wall_clock())   # the node's clock: virtual in the simulator
        policy = ReleasePolicy(entry.bundle_id, self.node.node_id, sites, roles, purposes, now,
                               now + self.settings.ttl_s)
        sized = self.protection()
        if not sized.possible:
            raise PublishError(sized.warning())
        holders = await self._service("keyshare").distribute(entry.bundle_id, entry.bundle_key, policy,
                                                             k=sized.k, n=sized.n)
        await self.catalog.advance(entry.bundle_id, "keyed", share_holders=list(holders))
        return await self._reload(entry)

    async def _replicate(self, entry: CatalogEntry) -> CatalogEntry:
        assert self.catalog is not None
        replicas = self.protection().replicas
        holders = await self._service("replica").place(entry.bundle_id, entry.size, r=replicas,
                                                       exclude=set(entry.share_holders))
        if replicas and not holders:
            raise PublishError("no member accepted a replica of the bundle; retrying later")
        await self.catalog.advance(entry.bundle_id, "replicated", replica_holders=list(holders))
        return await self._reload(entry)

    async def _announce(self, entry: CatalogEntry) -> CatalogEntry:
        assert self.catalog is not None
        dht = self.node.dht
        if dht is None:
            raise PublishError("this node has no DHT; cannot announce the bundle")
        keys = IndexKeys(self._secrets().index_key)
        bundle_raw = bytes.fromhex(entry.bundle_id)
        await dht.publish(keys.bundle_key(entry.bundle_id), entry.instances)
        await dht.publish(series_index_key(keys, entry.keyed_series_uid), entry.instances,
                          PayloadKind.BUNDLE_ID, bundle_raw)
        for slot, holder in enumerate(entry.replica_holders):
            await dht.publish(replica_index_key(keys, entry.bundle_id, slot), 1,
                              PayloadKind.NODE_ID, bytes.fromhex(holder))
        await self.catalog.advance(entry.bundle_id, "published")
        self._audit("publish.done", entry.series_uid, "ok", bundle=entry.bundle_id,
                    shares=len(entry.share_holders), replicas=len(entry.replica_holders))
        return await self._reload(entry)

    async def _reload(self, entry: CatalogEntry) -> CatalogEntry:
        assert self.catalog is not None
        fresh = await self.catalog.by_bundle(entry.bundle_id)
        if fresh is None:
            raise PublishError("the catalogue lost the bundle entry")
        return fresh
