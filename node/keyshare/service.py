"""The "keyshare" node service: holds other sites' shares, and splits/collects this site's keys.

Owner side: ``distribute`` splits a bundle key k-of-n and deposits one share, sealed to
the holder's box key, on each of the n members closest to the bundle id; ``reshare`` and
``repair_once`` replace a split by a new polynomial and revoke the old shares.
Requester side: ``collect_key`` gathers k shares, each re-sealed to this node, and
combines them in memory only. Holder side: see ``node.keyshare.holder``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox

from node.keyshare.custody import Custody
from node.keyshare.gather import KeyUnavailable, NotHeld, gather_shares
from node.keyshare.holder import RESHARE, ShareHolder
from node.keyshare.release_policy import ReleasePolicy, sign_policy
from node.keyshare.shamir import Share, ShamirError, combine, refresh, split
from node.keyshare.splits import SplitBook, SplitRecord
from node.net.encoding import EncodingError, b64, unb64
from node.net.errors import PeerError, PeerProtocolError, PeerRefused
from node.net.reqsign import RequestRefused
from node.replica.placement import share_candidates

if TYPE_CHECKING:
    from node.node import Node

__all__ = ["KeyShareService", "KeyUnavailable", "SharingError", "ShareRepair"]

log = logging.getLogger("medfed.keyshare")

DEPOSIT_PATH = "/v1/shares/deposit"
RELEASE_PATH = "/v1/shares/release"
REVOKE_PATH = "/v1/shares/revoke"


class SharingError(Exception):
    """A bundle key could not be split to enough share holders (the message says why)."""


@dataclass(frozen=True)
class KeyShareSettings:
    call_timeout_s: float = 5.0


@dataclass
class ShareRepair:
    bundles_checked: int = 0
    reshared: list[str] = field(default_factory=list)
    revocations_sent: int = 0
    problems: list[str] = field(default_factory=list)


class KeyShareService:
    name = "keyshare"

    def __init__(self, settings: KeyShareSettings = KeyShareSettings()) -> None:
        self.settings = settings
        self._node: Node | None = None
        self._custody: Custody | None = None
        self._splits: SplitBook | None = None
        self._lock = asyncio.Lock()   # one split change per node at a time

    # -- lifecycle -----------------------------------------------------------
    def register_routes(self, node: "Node") -> None:
        assert node.peer is not None and node.membership is not None
        self._node = node
        holder = ShareHolder(node.identity, node.membership.roster, self._open_custody,
                             lambda: node.audit, clock=node.transport.wall_clock)
        node.peer.add_route("POST", DEPOSIT_PATH, holder.deposit)
        node.peer.add_route("POST", RELEASE_PATH, holder.release)
        node.peer.add_route("POST", REVOKE_PATH, holder.revoke)

    async def start(self, node: "Node") -> None:
        self._node = node
        self._custody = await Custody(node.cfg.data_dir / "custody.sqlite").open()
        self._splits = await SplitBook(node.cfg.data_dir / "keysplits.sqlite").open()

    async def stop(self) -> None:
        custody, self._custody = self._custody, None
        splits, self._splits = self._splits, None
        if custody is not None:
            await custody.close()
        if splits is not None:
            await splits.close()

    def _open_custody(self) -> Custody:
        if self._custody is None:
            raise RequestRefused(503, "starting", "key share custody is not open yet; retry")
        return self._custody

    @property
    def custody(self) -> Custody:
        return self._open_custody()

    @property
    def splits(self) -> SplitBook:
        if self._splits is None:
            raise RuntimeError("keyshare service is not started")
        return self._splits

    @property
    def node(self) -> "Node":
        if self._node is None or self._node.client is None or self._node.membership is None:
            raise RuntimeError("keyshare service needs a federated, started node")
        return self._node

    def _active_ids(self) -> list[str]:
        return [m.node_id for m in self.node.membership.roster.current.active()]

    def _audit(self, action: str, outcome: str, bundle_id: str, **detail: Any) -> None:
        if self.node.audit is not None:
            self.node.audit.append(action, self.node.node_id, outcome, bundle_id, **detail)

    # -- owner: split and deposit ----------------------------------------------
    async def distribute(self, bundle_id: str, key: bytes, policy: ReleasePolicy, *,
                         k: int, n: int) -> list[str]:
        """Split ``key`` k-of-n; returns holder ids. Needs >= k holders, warns below n."""
        if policy.bundle_id != bundle_id:
            raise SharingError("release policy is for another bundle")
        if not policy.signature:
            policy = sign_policy(self.node.identity, policy)
        try:
            shares = split(key, k, n)
        except ShamirError as exc:
            raise SharingError(f"cannot split bundle key: {exc}") from exc
        async with self._lock:
            return await self._place_split(bundle_id, shares, policy)

    async def reshare(self, bundle_id: str, key: bytes) -> list[str]:
        """A new polynomial for the same key on the current closest members; old shares revoked."""
        async with self._lock:
            record = await self.splits.current(bundle_id)
            if record is None:
                raise SharingError(f"bundle {bundle_id[:16]}… has no recorded split to re-share")
            shares = split(key, record.k, record.n)
            return await self._place_split(bundle_id, shares, _policy(record))

    async def _place_split(self, bundle_id: str, shares: list[Share],
                           policy: ReleasePolicy) -> list[str]:
        me = self.node.node_id
        k, n = shares[0].k, shares[0].n
        candidates = share_candidates(bundle_id, self._active_ids(), me)
        placed: dict[str, int] = {}
        pending = list(shares)
        body = {"bundle_id": bundle_id, "split_id": shares[0].split_id.hex(),
                "policy": policy.to_dict()}
        while pending and candidates:
            batch = list(zip(candidates, pending))
            candidates = candidates[len(batch):]
            results = await asyncio.gather(*(self._deposit(h, s, body) for h, s in batch),
                                           return_exceptions=True)
            pending = [s for (h, s), r in zip(batch, results) if isinstance(r, BaseException)]
            placed.update({h: s.x for (h, s), r in zip(batch, results)
                           if not isinstance(r, BaseException)})
        if len(placed) < k:
            await self._revoke_at(bundle_id, body["split_id"], list(placed))
            self._audit("keyshare.split", "failed", bundle_id, holders=len(placed), k=k, n=n)
            raise SharingError(
                f"only {len(placed)} share holder(s) accepted a key share of bundle "
                f"{bundle_id[:16]}…; at least k={k} are needed (n={n}). Check that enough "
                "federation members are online and reachable, then publish again.")
        if len(placed) < n:
            log.warning("bundle %s…: key split to %d of %d holders (k=%d)", bundle_id[:16],
                        len(placed), n, k)
        await self.splits.record(SplitRecord(bundle_id, body["split_id"], k, n,
                                             json.dumps(policy.to_dict(), sort_keys=True),
                                             placed))
        self._audit("keyshare.split", "ok", bundle_id, holders=len(placed), k=k, n=n)
        await self._send_revocations(bundle_id)
        return list(placed)

    async def _deposit(self, holder: str, share: Share, body: dict[str, Any]) -> None:
        member = self.node.membership.roster.member(holder)
        if member is None:
            raise SharingError("holder left the roster")
        sealed = SealedBox(PublicKey(member.box_key)).encrypt(share.to_bytes())
        await self.node.client.call(member, "POST", DEPOSIT_PATH,
                                    {**body, "sealed": b64(sealed)},
                                    timeout=self.settings.call_timeout_s)

    async def _revoke_at(self, bundle_id: str, split_id: str, holders: Sequence[str]) -> int:
        """Revoke one split at ``holders``; returns how many confirmed."""
        async def one(holder: str) -> bool:
            member = self.node.membership.roster.member(holder)
            if member is None:
                return False
            try:
                await self.node.client.call(member, "POST", REVOKE_PATH,
                                            {"bundle_id": bundle_id, "split_ids": [split_id]},
                                            timeout=self.settings.call_timeout_s)
            except PeerError:
                return False
            return True
        confirmed = await asyncio.gather(*(one(h) for h in holders))
        return sum(confirmed)

    async def _send_revocations(self, bundle_id: str | None = None) -> int:
        """Revoke old splits at their holders; what fails stays pending for the next repair."""
        sent = 0
        for bid, split_id, holder in await self.splits.pending_revocations():
            if bundle_id is not None and bid != bundle_id:
                continue
            if await self._revoke_at(bid, split_id, [holder]):
                await self.splits.mark_revoked(bid, split_id, holder)
                sent += 1
        return sent

    # -- requester: collect -----------------------------------------------------
    async def collect_key(self, bundle_id: str, owner_node_id: str, assertion: dict[str, Any],
                          *, k: int, deadline_s: float) -> bytes:
        """Gather k shares sealed to this node and combine them; KeyUnavailable otherwise."""
        body = {"bundle_id": bundle_id, "owner": owner_node_id, "assertion": assertion}
        candidates = share_candidates(bundle_id, self._active_ids(), owner_node_id)
        wave = max(k, self.node.cfg.federation.shares_n)
        return await self._collect(bundle_id, body, candidates, k=k, wave=wave,
                                   deadline_s=deadline_s, combine_only=True)

    def first_wave(self, bundle_id: str, owner_node_id: str, *, k: int) -> list[str]:
        """The holders ``collect_key`` asks at once (the rest stand by for failures)."""
        wave = max(k, self.node.cfg.federation.shares_n)
        return share_candidates(bundle_id, self._active_ids(), owner_node_id)[:wave]

    async def _collect(self, bundle_id: str, body: dict[str, Any], candidates: list[str], *,
                       k: int, wave: int, deadline_s: float, combine_only: bool) -> Any:
        shares, tally = await gather_shares(bundle_id, candidates, lambda h: self._ask(h, body),
                                            k=k, wave=wave, deadline_s=deadline_s)
        try:
            return combine(shares) if combine_only else refresh(shares)
        except ShamirError as exc:
            raise KeyUnavailable(tally.explain(bundle_id, k, f" (shares do not combine: {exc})"))

    async def _ask(self, holder: str, body: dict[str, Any]) -> Share:
        member = self.node.membership.roster.member(holder)
        if member is None:
            raise NotHeld(holder)
        try:
            reply = await self.node.client.call(member, "POST", RELEASE_PATH, body,
                                                timeout=self.settings.call_timeout_s)
        except PeerRefused as exc:
            if exc.code == "no_share":
                raise NotHeld(holder) from exc
            raise
        try:
            sealed = unb64(reply.get("sealed"), "sealed share")
            share = Share.from_bytes(SealedBox(self.node.identity.box_key).decrypt(sealed))
        except (EncodingError, CryptoError, ShamirError) as exc:
            raise PeerProtocolError(holder, f"released share is unusable ({exc})") from exc
        return share

    # -- owner: repair ------------------------------------------------------------
    async def repair_once(self) -> ShareRepair:
        """Re-share every bundle whose current split lost a holder from the roster."""
        report = ShareRepair()
        active = set(self._active_ids())
        for bundle_id in await self.splits.bundles():
            report.bundles_checked += 1
            record = await self.splits.current(bundle_id)
            if record is None or set(record.holders) <= active:
                continue
            try:
                await self._reshare_from_holders(record, active)
                report.reshared.append(bundle_id)
            except (KeyUnavailable, SharingError) as exc:
                report.problems.append(str(exc))
                self._audit("keyshare.repair", "failed", bundle_id, reason=str(exc)[:200])
        report.revocations_sent = await self._send_revocations()
        return report

    async def _reshare_from_holders(self, record: SplitRecord, active: set[str]) -> None:
        remaining = [h for h in record.holders if h in active]
        body = {"bundle_id": record.bundle_id, "owner": self.node.node_id, "purpose": RESHARE}
        async with self._lock:
            shares = await self._collect(record.bundle_id, body, remaining, k=record.k,
                                         wave=len(remaining), deadline_s=self.settings.call_timeout_s * 2,
                                         combine_only=False)
            await self._place_split(record.bundle_id, shares, _policy(record))
        self._audit("keyshare.repair", "ok", record.bundle_id, lost=len(record.holders) - len(remaining))


def _policy(record: SplitRecord) -> ReleasePolicy:
    return ReleasePolicy.from_dict(json.loads(record.policy))
