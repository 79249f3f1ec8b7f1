"""The serving side of replicas: take an offered replica (by pulling it), stream a bundle,
answer a retrievability challenge.

Why pull, not push: the peer server reads request bodies whole, so a bundle travels as a
streamed GET response instead. Replica holders serve ciphertext to any member (it is
useless without k key shares); the owner serves its own bundles only to holders it has
just offered a replica to, or to requests the sharing layer's ``authorize`` hook admits.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node.net.errors import PeerError
from node.net.reqsign import RequestRefused
from node.net.server import PeerRequest
from node.replica.store import ReplicaError, ReplicaStore, check_bundle_id, hash_range, read_file

if TYPE_CHECKING:
    from node.node import Node

OFFER_PATH = "/v1/replicas/offer"
CHALLENGE_PATH = "/v1/replicas/challenge"
BUNDLE_ROUTE = "/v1/bundles/{bundle_id}"
NONCE_BYTES = 32

BundleSource = Callable[[str], "Path | None"]
Authorize = Callable[[PeerRequest, str], Awaitable[None]]


def bundle_path(bundle_id: str) -> str:
    return f"/v1/bundles/{check_bundle_id(bundle_id)}"


@dataclass(frozen=True)
class ReplicaSettings:
    max_replica_bytes: int = 4 << 30
    max_bytes_per_member: int = 64 << 30   # replicas held for one offering member, in all
    call_timeout_s: float = 5.0
    min_rate_bytes_s: float = 1 << 20      # pull deadline: call timeout + size at this rate
    stream_timeout_s: float = 600.0
    challenge_bytes: int = 1 << 20         # longest range one challenge hashes
    max_bundles_per_round: int = 50
    max_parallel_challenges: int = 2

    def transfer_timeout(self, size: int) -> float:
        return self.call_timeout_s + size / self.min_rate_bytes_s


def _bundle_id(doc: dict[str, Any]) -> str:
    try:
        return check_bundle_id(doc.get("bundle_id"))  # type: ignore[arg-type]
    except ReplicaError as exc:
        raise RequestRefused(400, "bad_request", str(exc)) from exc


def _int(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestRefused(400, "bad_request", f"field {key!r} must be an integer in {low}..{high}")
    return value


class ReplicaServer:
    def __init__(self, node: "Node", store: ReplicaStore, settings: ReplicaSettings) -> None:
        self.node = node
        self.store = store
        self.settings = settings
        self.source: BundleSource | None = None
        self.authorize: Authorize | None = None
        self.offered: set[tuple[str, str]] = set()   # (bundle_id, holder) pulls in progress

    def _record(self, action: str, actor: str, outcome: str, bundle_id: str, **detail: Any) -> None:
        if self.node.audit is not None:
            self.node.audit.append(action, actor, outcome, bundle_id, **detail)

    def own_copy(self, bundle_id: str) -> Path | None:
        path = self.source(bundle_id) if self.source is not None else None
        return path if path is not None and path.is_file() else None

    # -- take an offered replica ------------------------------------------------
    async def offer(self, call: PeerRequest) -> dict[str, Any]:
        bundle_id = _bundle_id(call.json)
        size = _int(call.json, "size", 1, self.settings.max_replica_bytes)
        source_id = call.json.get("source", call.sender.node_id)
        source = self.node.membership.roster.member(source_id) if isinstance(source_id, str) else None
        if source is None:
            raise RequestRefused(400, "bad_source", "the replica source is not an active member")
        if self.store.has(bundle_id):
            if await self.store.verify(bundle_id):
                return {"stored": True, "size": self.store.size(bundle_id), "new": False}
            self.store.remove(bundle_id)   # corrupt on disk: take a fresh copy
        held = self.store.bytes_held_for(call.sender.node_id)
        if held + size > self.settings.max_bytes_per_member:
            self._record("replica.store", call.sender.node_id, "refused", bundle_id,
                         reason="replica budget exceeded", held=held, size=size)
            raise RequestRefused(507, "replica_budget_exceeded",
                                 f"this node already holds {held} bytes of replicas for you; "
                                 f"{size} more would pass the {self.settings.max_bytes_per_member}"
                                 "-byte budget per member (place the replica elsewhere)")
        chunks = self.node.client.stream(source, "GET", bundle_path(bundle_id),
                                         timeout=self.settings.transfer_timeout(size))
        try:
            async with aclosing(chunks):
                stored = await self.store.write(bundle_id, chunks, max_bytes=size,
                                                held_for=call.sender.node_id)
        except (PeerError, ReplicaError) as exc:
            self._record("replica.store", call.sender.node_id, "failed", bundle_id,
                         reason=str(exc)[:200])
            raise RequestRefused(502, "replica_pull_failed", f"could not take the replica: {exc}")
        self._record("replica.store", call.sender.node_id, "ok", bundle_id, size=stored,
                     source=source.node_id)
        return {"stored": True, "size": stored, "new": True}

    # -- stream a bundle ---------------------------------------------------------
    async def get_bundle(self, call: PeerRequest) -> web.StreamResponse:
        raw = call.http.match_info.get("bundle_id", "")
        try:
            bundle_id = check_bundle_id(raw)
        except ReplicaError as exc:
            raise RequestRefused(400, "bad_request", str(exc)) from exc
        sender = call.sender.node_id
        path, role = self.own_copy(bundle_id), "owner"
        if path is not None and (bundle_id, sender) not in self.offered:
            if self.authorize is None:
                raise RequestRefused(403, "not_authorized",
                                     "this site serves its own bundles only through its sharing policy")
            await self.authorize(call, bundle_id)
        elif path is None and self.store.has(bundle_id):
            path, role = self.store.path(bundle_id), "replica"
        if path is None:
            raise RequestRefused(404, "no_bundle", "this node holds no copy of that bundle")
        size = path.stat().st_size
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(size)})
        await response.prepare(call.http)
        async for chunk in read_file(path):
            await response.write(chunk)
        await response.write_eof()
        self._record("bundle.serve", sender, "ok", bundle_id, size=size, role=role)
        return response

    # -- prove retrievability -----------------------------------------------------
    async def challenge(self, call: PeerRequest) -> dict[str, Any]:
        bundle_id = _bundle_id(call.json)
        nonce = call.json.get("nonce")
        if not isinstance(nonce, str) or len(nonce) != 2 * NONCE_BYTES:
            raise RequestRefused(400, "bad_request", f"nonce must be {NONCE_BYTES} bytes of hex")
        try:
            nonce_bytes = bytes.fromhex(nonce)
        except ValueError as exc:
            raise RequestRefused(400, "bad_request", "nonce is not hex") from exc
        if not self.store.has(bundle_id):
            raise RequestRefused(404, "no_bundle", "this node holds no replica of that bundle")
        size = self.store.size(bundle_id)
        start = _int(call.json, "offset", 0, max(size - 1, 0))
        length = _int(call.json, "length", 1, self.settings.challenge_bytes)
        if start + length > size:
            raise RequestRefused(400, "bad_request", "challenge range lies beyond the replica")
        digest = await hash_range(self.store.path(bundle_id), nonce_bytes, start, length)
        return {"digest": digest}


def challenge_range(size: int, max_len: int) -> tuple[bytes, int, int]:
    """A fresh nonce and a random range of at most ``max_len`` bytes inside ``size``."""
    length = min(size, max_len)
    start = secrets.randbelow(size - length + 1)
    return secrets.token_bytes(NONCE_BYTES), start, length
