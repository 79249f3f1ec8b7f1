"""The "replica" node service: places encrypted replicas, streams them back, checks and repairs.

Owner side: ``place`` offers a bundle to the members closest to its id (holders pull it
and verify its hash); ``challenge`` asks a holder to prove it still has the bytes;
``repair_once`` (also run every ``repair_interval_s``) drops holders that left the
roster or failed a challenge, re-places on the next closest members, and lets the
keyshare service re-share keys whose holders left. Placements live in SQLite, so a
restarted node resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.net.errors import PeerError
from node.replica.ledger import ReplicaLedger, Target
from node.replica.placement import replica_candidates
from node.replica.serve import (BUNDLE_ROUTE, CHALLENGE_PATH, OFFER_PATH, ReplicaServer,
                                ReplicaSettings, bundle_path, challenge_range)
from node.replica.store import ReplicaError, ReplicaStore, check_bundle_id, hash_range

if TYPE_CHECKING:
    from node.keyshare.service import ShareRepair
    from node.node import Node

__all__ = ["RepairReport", "ReplicaError", "ReplicaService", "ReplicaSettings"]

log = logging.getLogger("medfed.replica")


@dataclass
class RepairReport:
    bundles_checked: int = 0
    challenges: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)   # bundle, holder, why
    placed: list[tuple[str, str]] = field(default_factory=list)        # bundle, new holder
    short: list[str] = field(default_factory=list)                     # bundles still below r
    shares: "ShareRepair | None" = None


class ReplicaService:
    name = "replica"

    def __init__(self, settings: ReplicaSettings = ReplicaSettings()) -> None:
        self.settings = settings
        self._node: Node | None = None
        self._server: ReplicaServer | None = None
        self._ledger: ReplicaLedger | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._pending_source: tuple[Callable[[str], Path | None], Callable[..., Awaitable[None]]] | None = None

    # -- lifecycle -------------------------------------------------------------
    def register_routes(self, node: "Node") -> None:
        assert node.peer is not None
        self._node = node
        self._server = ReplicaServer(node, ReplicaStore(node.cfg.data_dir / "replicas"),
                                     self.settings)
        if self._pending_source is not None:
            self._server.source, self._server.authorize = self._pending_source
        node.peer.add_route("POST", OFFER_PATH, self._server.offer)
        node.peer.add_route("GET", BUNDLE_ROUTE, self._server.get_bundle)
        node.peer.add_route("POST", CHALLENGE_PATH, self._server.challenge)

    async def start(self, node: "Node") -> None:
        self._node = node
        self.server.store.sweep_temp_files()
        self._ledger = await ReplicaLedger(node.cfg.data_dir / "replicas.sqlite").open()
        interval = node.cfg.federation.repair_interval_s
        if interval > 0:
            self._loop_task = asyncio.create_task(self._repair_loop(interval))

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            await ledger.close()

    def set_bundle_source(self, source: Callable[[str], Path | None],
                          authorize: Callable[..., Awaitable[None]]) -> None:
        """Where the owner's own bundle files are, and who may stream them (sharing policy)."""
        self._pending_source = (source, authorize)
        if self._server is not None:
            self._server.source, self._server.authorize = source, authorize

    @property
    def server(self) -> ReplicaServer:
        if self._server is None:
            raise RuntimeError("replica service needs a federated node (no peer server)")
        return self._server

    @property
    def store(self) -> ReplicaStore:
        return self.server.store

    @property
    def ledger(self) -> ReplicaLedger:
        if self._ledger is None:
            raise RuntimeError("replica service is not started")
        return self._ledger

    @property
    def node(self) -> "Node":
        if self._node is None or self._node.client is None or self._node.membership is None:
            raise RuntimeError("replica service needs a federated, started node")
        return self._node

    def _audit(self, action: str, outcome: str, bundle_id: str, **detail: Any) -> None:
        if self.node.audit is not None:
            self.node.audit.append(action, self.node.node_id, outcome, bundle_id, **detail)

    # -- owner: place ------------------------------------------------------------
    async def place(self, bundle_id: str, size: int, *, r: int, exclude: set[str]) -> list[str]:
        """Replicas on r members closest to the bundle id; ``exclude`` (e.g. share holders)
        are used only when too few other members accept. Returns all current holders."""
        return await self._place(bundle_id, size, r, exclude, skip=set())

    async def _place(self, bundle_id: str, size: int, r: int, exclude: set[str], *,
                     skip: set[str]) -> list[str]:
        check_bundle_id(bundle_id)
        await self.ledger.set_target(Target(bundle_id, size, r, frozenset(exclude)))
        held = await self.ledger.holders(bundle_id)
        active = [m.node_id for m in self.node.membership.roster.current.active()]
        candidates = [c for c in replica_candidates(bundle_id, active, self.node.node_id, exclude)
                      if c not in held and c not in skip]
        source = self.node.node_id if self.server.own_copy(bundle_id) else None
        if source is None:
            source = next((h for h in held if h in active), None)
        if source is None:
            raise ReplicaError(f"no copy of bundle {bundle_id[:16]}… is left to replicate from")
        while len(held) < r and candidates:
            batch, candidates = candidates[:r - len(held)], candidates[r - len(held):]
            results = await asyncio.gather(*(self._offer(h, bundle_id, size, source) for h in batch),
                                           return_exceptions=True)
            for holder, result in zip(batch, results):
                if isinstance(result, BaseException):
                    log.info("replica offer of %s… to %s… failed: %s", bundle_id[:16],
                             holder[:16], result)
                    continue
                await self.ledger.add(bundle_id, holder)
                held.append(holder)
                self._audit("replica.place", "ok", bundle_id, holder=holder)
        if len(held) < r:
            log.warning("bundle %s…: %d of %d replicas placed", bundle_id[:16], len(held), r)
        return held

    async def _offer(self, holder: str, bundle_id: str, size: int, source: str) -> None:
        member = self.node.membership.roster.member(holder)
        if member is None:
            raise ReplicaError("holder left the roster")
        key = (bundle_id, holder)
        self.server.offered.add(key)
        try:
            reply = await self.node.client.call(
                member, "POST", OFFER_PATH, {"bundle_id": bundle_id, "size": size, "source": source},
                timeout=self.settings.transfer_timeout(size) + self.settings.call_timeout_s)
        finally:
            self.server.offered.discard(key)
        if reply.get("stored") is not True or reply.get("size") != size:
            raise ReplicaError("holder did not confirm a replica of the offered size")

    # -- anyone: stream ------------------------------------------------------------
    async def open_stream(self, bundle_id: str, holders: Sequence[str], *,
                          request: Mapping[str, Any] | None = None,
                          verify: bool = True) -> AsyncIterator[bytes]:
        """The bundle's bytes from the first holder that answers; raises ReplicaError at the
        end if they do not hash to the bundle id. ``request`` is sent as the JSON body
        (e.g. the user assertion the owner's ``authorize`` hook checks). ``verify=False``
        skips that hash for a reader that checks the id itself (``BundleDecoder`` with
        ``expected_id``): at 1 Gbit/s a second SHA-256 over the stream costs the loop
        about 0.1 s per 56 MB bundle."""
        path = bundle_path(bundle_id)
        reasons: list[str] = []
        for holder in holders:
            member = self.node.membership.roster.member(holder)
            if member is None:
                reasons.append(f"{holder[:16]}… not a member")
                continue
            chunks = self.node.client.stream(member, "GET", path, request,
                                             timeout=self.settings.stream_timeout_s)
            async with aclosing(chunks):
                try:
                    first = await anext(chunks, b"")
                except PeerError as exc:
                    reasons.append(str(exc))
                    continue
                digest = hashlib.sha256(first) if verify else None
                yield first
                async for chunk in chunks:
                    if digest is not None:
                        digest.update(chunk)
                    yield chunk
            if digest is not None and digest.hexdigest() != bundle_id:
                raise ReplicaError(f"bundle {bundle_id[:16]}… from {holder[:16]}… does not match "
                                   "its id; the copy is corrupt or was altered")
            return
        raise ReplicaError(f"no holder of bundle {bundle_id[:16]}… could serve it: "
                           + ("; ".join(reasons) or "no holders given"))

    # -- owner: check --------------------------------------------------------------
    async def challenge(self, bundle_id: str, holder: str) -> bool:
        """True when ``holder`` proves it holds the exact bytes (hash of a random range with a
        nonce, checked against our copy; without our copy, the full stream is verified)."""
        ok, why = await self._challenge(bundle_id, holder)
        self._audit("replica.challenge", "ok" if ok else "failed", bundle_id, holder=holder,
                    reason=why)
        return ok

    async def _challenge(self, bundle_id: str, holder: str) -> tuple[bool, str]:
        member = self.node.membership.roster.member(holder)
        if member is None:
            return False, "not an active member"
        own = self.server.own_copy(bundle_id)
        try:
            if own is None:
                async with aclosing(self.open_stream(bundle_id, [holder])) as chunks:
                    async for _ in chunks:
                        pass
                return True, "full copy verified"
            nonce, start, length = challenge_range(own.stat().st_size, self.settings.challenge_bytes)
            expected = await hash_range(own, nonce, start, length)
            reply = await self.node.client.call(
                member, "POST", CHALLENGE_PATH, {"bundle_id": bundle_id, "nonce": nonce.hex(),
                                                 "offset": start, "length": length},
                timeout=self.settings.call_timeout_s + length / self.settings.min_rate_bytes_s)
        except (PeerError, ReplicaError) as exc:
            return False, str(exc)[:200]
        answer = reply.get("digest")
        if not isinstance(answer, str) or not secrets.compare_digest(answer, expected):
            return False, "wrong proof: the held bytes differ from the bundle"
        return True, "proof matches"

    # -- owner: repair -------------------------------------------------------------
    async def repair_once(self) -> RepairReport:
        """One rate-limited round over the least recently checked bundles."""
        report = RepairReport()
        active = {m.node_id for m in self.node.membership.roster.current.active()}
        gate = asyncio.Semaphore(self.settings.max_parallel_challenges)
        for target in await self.ledger.targets(self.settings.max_bundles_per_round):
            report.bundles_checked += 1
            await self._repair_bundle(target, active, gate, report)
        keyshare = self.node.service("keyshare")
        repair_shares = getattr(keyshare, "repair_once", None)
        if repair_shares is not None:
            report.shares = await repair_shares()
        return report

    async def _repair_bundle(self, target: Target, active: set[str], gate: asyncio.Semaphore,
                             report: RepairReport) -> None:
        bundle_id = target.bundle_id

        async def check(holder: str) -> tuple[str, bool, str]:
            if holder not in active:
                return holder, False, "left the roster"
            async with gate:
                ok, why = await self._challenge(bundle_id, holder)
            return holder, ok, why

        holders = await self.ledger.holders(bundle_id)
        results = await asyncio.gather(*(check(h) for h in holders))
        report.challenges += sum(1 for h in holders if h in active)
        for holder, ok, why in results:
            if ok:
                await self.ledger.checked(bundle_id, holder)
                continue
            report.failed.append((bundle_id, holder, why))
            await self.ledger.remove(bundle_id, holder)
            self._audit("replica.lost", "failed", bundle_id, holder=holder, reason=why)
        if len(holders) - sum(1 for _, ok, _ in results if not ok) >= target.r:
            return
        before = set(await self.ledger.holders(bundle_id))
        try:
            lost = {h for h, ok, _ in results if not ok}
            after = await self._place(bundle_id, target.size, target.r, set(target.avoid), skip=lost)
        except ReplicaError as exc:
            after = list(before)
            self._audit("replica.repair", "failed", bundle_id, reason=str(exc)[:200])
        report.placed += [(bundle_id, h) for h in after if h not in before]
        if len(after) < target.r:
            report.short.append(bundle_id)

    async def _repair_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                report = await self.repair_once()
            except Exception:
                log.exception("replica repair round failed; retrying next interval")
                continue
            if report.failed or report.placed:
                log.info("repair: %d lost, %d re-placed, %d still short", len(report.failed),
                         len(report.placed), len(report.short))
