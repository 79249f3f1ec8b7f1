"""The owner path: ``POST /v1/series/fetch`` — the owning site serves one of its series.

Why the owner may hand out the key itself: it owns the images, so it needs no share
holder's consent; it checks its own site policy per request (the exact rules, which a
release policy given to share holders can only approximate), audits, and seals the
bundle key to the requesting node's box key, so only that node can open it.

Identified data (policy level ``identified`` and asked for): PHI never goes into stored
bundles or replicas. The owner streams a one-off bundle of its original stored
instances under a fresh key, sealed the same way; nothing of it is kept.

Wire format of the answer (one response, so one policy decision covers it)::

    4 bytes big-endian header length | header JSON | bundle bytes

header = {"bundle_id", "sealed_key" (hex), "instances", "size", "identified"}.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from aiohttp import web
from nacl.public import PublicKey, SealedBox

from node.bundle.stream import new_bundle_key
from node.net.assertion import accept_assertion
from node.net.reqsign import RequestRefused
from node.policy import Level, decide, policy_from_dict
from node.replica.store import read_file
from node.sharing.build import build_bundle_file, ordered_sources, series_sources
from node.sharing.catalog import Catalog, CatalogEntry

if TYPE_CHECKING:
    from node.net.server import PeerRequest
    from node.node import Node

FETCH_PATH = "/v1/series/fetch"
FRAME = struct.Struct(">I")
MAX_HEADER_BYTES = 4096


class FrameError(Exception):
    """The owner's answer does not start with a valid header."""


@dataclass(frozen=True)
class FetchHeader:
    bundle_id: str
    sealed_key: bytes
    instances: int
    size: int
    identified: bool

    def to_bytes(self) -> bytes:
        body = json.dumps({"bundle_id": self.bundle_id, "sealed_key": self.sealed_key.hex(),
                           "instances": self.instances, "size": self.size,
                           "identified": self.identified}).encode()
        return FRAME.pack(len(body)) + body

    @classmethod
    def from_json(cls, raw: bytes) -> "FetchHeader":
        try:
            doc = json.loads(raw)
            made = cls(str(doc["bundle_id"]), bytes.fromhex(doc["sealed_key"]), int(doc["instances"]),
                       int(doc["size"]), bool(doc["identified"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise FrameError(f"owner's fetch header is malformed ({type(exc).__name__})") from None
        if len(made.bundle_id) != 64:
            raise FrameError("owner's fetch header has no valid bundle id")
        return made


def split_header(buffer: bytearray) -> FetchHeader | None:
    """Take the header off the front of ``buffer`` once it is complete."""
    if len(buffer) < FRAME.size:
        return None
    (length,) = FRAME.unpack_from(buffer)
    if not 0 < length <= MAX_HEADER_BYTES:
        raise FrameError(f"owner's fetch header length {length} is out of range")
    if len(buffer) < FRAME.size + length:
        return None
    header = FetchHeader.from_json(bytes(buffer[FRAME.size: FRAME.size + length]))
    del buffer[: FRAME.size + length]
    return header


def _refuse(status: int, code: str, reason: str) -> RequestRefused:
    return RequestRefused(status, code, reason)


class OwnerFetch:
    """Serves this node's own series to authorised members."""

    def __init__(self, node: "Node", catalog: Catalog, bundles_dir: Path) -> None:
        self.node = node
        self.catalog = catalog
        self.bundles_dir = bundles_dir

    def authorize(self, call: "PeerRequest", *, identified: bool = False) -> tuple[Any, Any]:
        """Verified assertion and policy decision, or RequestRefused (403) naming the reason."""
        node = self.node
        assert node.membership is not None
        assertion = accept_assertion(call.json.get("assertion"), node.membership.roster.current,
                                     call.sender.node_id, now=node.transport.wall_clock())
        decision = decide(policy_from_dict(node.cfg.policy), assertion, call.sender)
        wanted = Level.IDENTIFIED if identified else Level.DEIDENTIFIED
        if decision.level not in (Level.DEIDENTIFIED, Level.IDENTIFIED) or (
                identified and decision.level is not Level.IDENTIFIED):
            raise _refuse(403, "policy_denied", f"this site's policy does not release "
                                                f"{wanted.value} images: {decision.reason}")
        return assertion, decision

    async def authorize_bundle(self, call: "PeerRequest", bundle_id: str) -> None:
        """The replica route's hook: the owner's own bundle only under its site policy."""
        self.authorize(call)

    async def handle(self, call: "PeerRequest") -> web.StreamResponse:
        node = self.node
        assert node.audit is not None
        identified = bool(call.json.get("identified", False))
        assertion, decision = self.authorize(call, identified=identified)
        entry = await self._entry(call.json)
        detail: dict[str, Any] = {"level": "identified" if identified else "deidentified",
                                  "user": assertion.user[:64], "rule": decision.rule or ""}
        node.audit.append("series.fetch", call.sender.node_id, "ok", entry.bundle_id, **detail)
        if identified:
            return await self._serve_identified(call, entry)
        path = self.bundles_dir / f"{entry.bundle_id}.mfb"
        header = FetchHeader(entry.bundle_id, self._seal(call, entry.bundle_key), entry.instances,
                             entry.size, False)
        return await self._stream(call, header, read_file(path))

    async def _entry(self, doc: dict[str, Any]) -> CatalogEntry:
        bundle_id, keyed = doc.get("bundle_id"), doc.get("keyed_series_uid")
        entry = None
        if isinstance(bundle_id, str) and bundle_id:
            entry = await self.catalog.by_bundle(bundle_id.lower())
        elif isinstance(keyed, str) and keyed:
            entry = await self.catalog.by_keyed_series(keyed)
        else:
            raise _refuse(400, "bad_request", "name the series by bundle_id or keyed_series_uid")
        if entry is None or not (self.bundles_dir / f"{entry.bundle_id}.mfb").exists():
            raise _refuse(404, "unknown_series", "this site has no published bundle for that series")
        return entry

    def _seal(self, call: "PeerRequest", key: bytes) -> bytes:
        return SealedBox(PublicKey(call.sender.box_key)).encrypt(key)

    async def _serve_identified(self, call: "PeerRequest", entry: CatalogEntry) -> web.StreamResponse:
        node = self.node
        sources = await series_sources(node.store, node.files, entry.series_uid)
        key = new_bundle_key()
        scratch = node.cfg.data_dir / "tmp"

        def build() -> Path:
            ordered = ordered_sources(sources)
            return build_bundle_file(ordered, scratch, key, lambda p: p.read_bytes()).path

        path = await asyncio.to_thread(build)
        try:
            size = path.stat().st_size
            header = FetchHeader(path.name.removesuffix(".mfb"), self._seal(call, key), len(sources),
                                 size, True)
            return await self._stream(call, header, read_file(path))
        finally:
            path.unlink(missing_ok=True)

    async def _stream(self, call: "PeerRequest", header: FetchHeader,
                      chunks: AsyncIterator[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(call.http)
        await response.write(header.to_bytes())
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response
