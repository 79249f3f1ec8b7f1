"""Fetch one series into this node's memory: from its owner, else from replicas + key shares.

Owner path: ``POST /v1/series/fetch`` at the owner, which checks its site policy, audits
and answers with the bundle and its key sealed to this node (see ``sharing.owner``).
Only identified (PHI) data needs the owner; de-identified data falls back, when the
owner is unreachable or sends a bad stream, to the replica path: k key shares
(``keyshare.collect_key``, each holder checks the owner's signed release policy) and the
bundle from a replica holder, trying holders in turn — a tampered or cut replica fails
authentication (``BundleTamperedError``) and the next holder is tried. A refusal by the
owner's policy is final: falling back would route around the stricter rule.

Bytes are decrypted and decompressed as they arrive (``BundleDecoder``); the sink makes
the result visible only after the whole bundle, and its id, verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from nacl.exceptions import CryptoError
from nacl.public import SealedBox

from node.bundle.stream import BundleDecoder, BundleError
from node.dht.index_keys import IndexKeys
from node.dht.records import PayloadKind
from node.net.assertion import UserAssertion
from node.net.errors import PeerError, PeerRefused
from node.replica.placement import ranked, replica_candidates
from node.sharing.hedge import ReplicaPathDialer
from node.sharing.owner import FETCH_PATH, FrameError, split_header
from node.sharing.pipeline import Progress, decode_stream, read_until_ready
from node.sharing.publisher import replica_index_key, series_index_key
from node.sharing.sinks import InstanceSink

if TYPE_CHECKING:
    from node.node import Node
    from node.users import User

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
REPLICA_SLOTS = 8                        # DHT replica records looked up per bundle
OWNER_DOWN_MEMORY_S = 5.0                # an owner we just failed to connect to is not retried


class FetchError(Exception):
    """The series could not be fetched (the message says what was tried and why)."""


class FetchRefused(FetchError):
    """The owning site's policy does not release this series to this user."""


@dataclass(frozen=True)
class SeriesRef:
    """What a query result names: owner node id and bundle id or keyed series UID."""

    owner: str | None = None
    bundle_id: str | None = None
    keyed_series_uid: str | None = None


def parse_series_ref(text: str) -> SeriesRef:
    """``[OWNER:]BUNDLE_ID`` or ``[OWNER:]KEYED_SERIES_UID`` (owner = 64-hex node id)."""
    owner, _, name = text.strip().rpartition(":")
    owner, name = owner.lower(), name.strip()
    if owner and not _HEX64.match(owner):
        raise FetchError("the owner in a series reference must be a 64-hex node id")
    if _HEX64.match(name.lower()):
        return SeriesRef(owner or None, bundle_id=name.lower())
    if _UID.match(name) and len(name) <= 64:
        return SeriesRef(owner or None, keyed_series_uid=name)
    raise FetchError("a series reference is [OWNER:]BUNDLE_ID (64 hex) or [OWNER:]SERIES_UID (digits and dots)")


@dataclass(frozen=True)
class FetchResult:
    bundle_id: str
    instances: int
    stored_bytes: int
    plain_bytes: int
    source: str            # "owner" or "replica:<node id>"
    identified: bool
    outputs: list[Any]
    attempts: tuple[str, ...] = ()     # sources tried first, and why each failed


class _Attempt(Exception):
    """One source failed in a way another source may fix."""


class Retriever:
    def __init__(self, node: "Node", *, deadline_s: float = 120.0) -> None:
        if node.membership is None or node.client is None:
            raise FetchError("this node is not a federation member; join a federation first")
        self.node = node
        self.deadline_s = deadline_s

    @property
    def _index(self) -> IndexKeys:
        assert self.node.membership is not None
        return IndexKeys(self.node.membership.secrets.index_key)

    async def fetch(self, ref: SeriesRef, assertion: UserAssertion, make_sink: Callable[[str], InstanceSink], *,
                    identified: bool = False, progress: Progress | None = None) -> FetchResult:
        """Fetch within ``deadline_s``; raises FetchRefused / FetchError."""
        try:
            async with asyncio.timeout(self.deadline_s):
                return await self._fetch(ref, assertion, make_sink, identified, progress)
        except TimeoutError:
            raise FetchError(f"the series did not arrive within {self.deadline_s:.0f}s") from None

    async def _fetch(self, ref: SeriesRef, assertion: UserAssertion, make_sink: Callable[[str], InstanceSink],
                     identified: bool, progress: Progress | None) -> FetchResult:
        if ref.owner is None:
            ref = await self._resolve(ref)
        if ref.owner is not None and ref.bundle_id is None and not identified:
            return await self._fetch_by_uid(ref, assertion, make_sink, progress)
        return await self._fetch_resolved(ref, assertion, make_sink, identified, progress, [])

    async def _fetch_by_uid(self, ref: SeriesRef, assertion: UserAssertion,
                            make_sink: Callable[[str], InstanceSink], progress: Progress | None) -> FetchResult:
        """Owner named, bundle id not (what the DICOMweb and DICOM gateways ask for): the
        owner is asked by series UID at once while the DHT lookup of the bundle id, which
        only the replica path needs, runs beside it. It used to come first: one DHT round
        trip before the owner was asked (simulator, 10 ms one way: 40 ms against 20 ms by
        bundle id), and a whole RPC deadline when the dead owner is among the closest."""
        assert ref.owner is not None
        resolving = asyncio.ensure_future(self._resolve(ref))
        try:
            problems: list[str] = []
            known_down = self._owner_known_down(ref.owner)
            owner_tried = known_down is None
            if owner_tried:
                try:
                    return await self._owner_attempt(ref, assertion, make_sink, False, progress, problems)
                except _Attempt as exc:
                    problems.append(str(exc))
            resolved = await resolving
            if resolved.owner != ref.owner:
                owner_tried = False     # the index names another publisher: ask it too
            return await self._fetch_resolved(resolved, assertion, make_sink, False, progress, problems,
                                              owner_tried=owner_tried)
        finally:
            if not resolving.done():
                resolving.cancel()
            elif not resolving.cancelled():
                resolving.exception()   # retrieved: a lookup the owner made unnecessary

    async def _fetch_resolved(self, ref: SeriesRef, assertion: UserAssertion,
                              make_sink: Callable[[str], InstanceSink], identified: bool,
                              progress: Progress | None, problems: list[str], *,
                              owner_tried: bool = False) -> FetchResult:
        known_down = None
        if not identified and not owner_tried and ref.owner is not None and ref.bundle_id is not None:
            known_down = self._owner_known_down(ref.owner)
        if known_down is not None:
            problems.append(f"owner: {known_down}; not asked first")
            try:
                result = await self._from_replicas(ref, assertion, make_sink, progress, problems)
                self._audit(assertion, result)
                return result
            except FetchError as exc:   # it may be back already: ask it after all
                problems = [str(exc)]
        if ref.owner is not None and not owner_tried:
            try:
                return await self._owner_attempt(ref, assertion, make_sink, identified, progress, problems)
            except _Attempt as exc:
                problems.append(str(exc))
        if known_down is not None:
            raise FetchError("; ".join(problems))
        if identified:
            raise FetchError("identified images come only from the owning site, which could not serve them ("
                             + "; ".join(problems) + ")")
        if ref.bundle_id is None or ref.owner is None:
            raise FetchError("the series is not in the federation index (no bundle record found)"
                             + ("; " + "; ".join(problems) if problems else ""))
        result = await self._from_replicas(ref, assertion, make_sink, progress, problems)
        self._audit(assertion, result)
        return result

    async def _owner_attempt(self, ref: SeriesRef, assertion: UserAssertion,
                             make_sink: Callable[[str], InstanceSink], identified: bool,
                             progress: Progress | None, problems: list[str]) -> FetchResult:
        """The owner path, audited; raises _Attempt("owner: why (after N ms)")."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        dialer = None if identified else self._replica_path_dialer(ref)
        try:
            result = await self._from_owner(ref, assertion, make_sink, identified, progress,
                                            on_dial=None if dialer is None else dialer.on_dial)
        except _Attempt as exc:
            raise _Attempt(f"owner: {exc} (after {(loop.time() - started) * 1e3:.0f} ms)") from None
        finally:
            if dialer is not None:
                dialer.stop()
        result = replace(result, attempts=tuple(problems))
        self._audit(assertion, result)
        return result

    def _replica_path_dialer(self, ref: SeriesRef) -> ReplicaPathDialer | None:
        """Who the replica path would call first (the placement's replica holders, the key
        shares' first wave), to dial while a cold owner connection opens (``hedge``)."""
        node = self.node
        keyshare, replica = node.service("keyshare"), node.service("replica")
        if (ref.bundle_id is None or ref.owner is None or keyshare is None or replica is None
                or node.membership is None or node.client is None):
            return None
        k = node.cfg.federation.shares_k
        wanted = self._placement_guess(ref.bundle_id, ref.owner) + keyshare.first_wave(  # type: ignore[attr-defined]
            ref.bundle_id, ref.owner, k=k)
        roster = node.membership.roster
        members = [m for m in (roster.member(h) for h in dict.fromkeys(wanted)
                               if h not in (node.node_id, ref.owner)) if m is not None]
        return ReplicaPathDialer(node.client, members, timeout_s=min(self.deadline_s, 10.0))

    def _owner_known_down(self, owner: str) -> str | None:
        """Why this node believes ``owner`` is down: a connect to it failed within
        ``OWNER_DOWN_MEMORY_S``, or the keeper's dials to it have failed since it last
        answered (a running node knows before anyone asks). Then a de-identified series
        whose bundle id is known goes to the replica path first. Why: the failed connect
        costs the fallback 1.5 RTT again (31 ms through bench.wan's 20 ms link, 7 % of a
        1 Gbit/s fetch of a 300-slice CT series). The replica path is the one the design
        has for an unreachable owner (share holders check the owner's signed release
        policy); should it fail, the owner is asked after all (it may be back)."""
        if self.node.client is None:
            return None
        ago = self.node.client.connect_failed_within(owner, OWNER_DOWN_MEMORY_S)
        if ago is not None:
            return f"could not be connected to {ago:.1f} s ago"
        keeper = self.node.keeper
        down = keeper.down_for(owner) if keeper is not None else None
        if down is not None:
            return f"this node's keeper has not reached it for {down:.1f} s"
        return None

    def _audit(self, assertion: UserAssertion, result: FetchResult) -> None:
        if self.node.audit is not None:
            self.node.audit.append("series.fetched", assertion.user[:64], "ok", result.bundle_id,
                                   source=result.source[:80], instances=result.instances)

    # -- index -----------------------------------------------------------------
    async def _resolve(self, ref: SeriesRef) -> SeriesRef:
        """Owner and bundle id from the DHT (records are signed by their publisher)."""
        dht = self.node.dht
        if dht is None:
            return ref
        if ref.bundle_id is not None:
            found = await dht.get(self._index.bundle_key(ref.bundle_id))
            owners = [r.publisher.hex() for r in found.records if r.payload_kind is PayloadKind.NONE]
            owner = ref.owner if ref.owner in owners or not owners else owners[0]
            return SeriesRef(owner or ref.owner, ref.bundle_id)
        assert ref.keyed_series_uid is not None
        found = await dht.get(series_index_key(self._index, ref.keyed_series_uid))
        records = [r for r in found.records if r.payload_kind is PayloadKind.BUNDLE_ID]
        if ref.owner is not None:
            records = [r for r in records if r.publisher.hex() == ref.owner] or records
        if not records:
            return ref
        best = max(records, key=lambda r: r.issued_ms)
        return SeriesRef(best.publisher.hex(), best.payload.hex(), ref.keyed_series_uid)

    # -- owner path ---------------------------------------------------------------
    async def _from_owner(self, ref: SeriesRef, assertion: UserAssertion, make_sink: Callable[[str], InstanceSink],
                          identified: bool, progress: Progress | None, *,
                          on_dial: Callable[[], None] | None = None) -> FetchResult:
        node = self.node
        assert node.membership is not None and node.client is not None and ref.owner is not None
        member = node.membership.roster.member(ref.owner)
        if member is None:
            raise _Attempt("the owner is not an active member")
        body: dict[str, Any] = {"assertion": assertion.to_dict(), "identified": identified}
        if ref.bundle_id is not None:
            body["bundle_id"] = ref.bundle_id
        else:
            body["keyed_series_uid"] = ref.keyed_series_uid
        stream = node.client.stream(member, "POST", FETCH_PATH, body, timeout=self.deadline_s,
                                    on_dial=on_dial)
        try:
            return await self._decode_framed(stream, ref, make_sink, progress)
        except PeerRefused as exc:
            if exc.status == 403:
                raise FetchRefused(f"the owning site refused: {exc.reason}") from None
            raise _Attempt(f"refused ({exc.code}: {exc.reason})") from None
        except (PeerError, FrameError, BundleError, CryptoError) as exc:
            raise _Attempt(f"{type(exc).__name__}: {exc}") from None

    async def _decode_framed(self, stream: AsyncIterator[bytes], ref: SeriesRef,
                             make_sink: Callable[[str], InstanceSink], progress: Progress | None) -> FetchResult:
        buffer = bytearray()
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                buffer += chunk
                header = split_header(buffer)
                if header is not None:
                    break
            else:
                raise FrameError("the owner's answer ended before its header")
            if ref.bundle_id is not None and not header.identified and header.bundle_id != ref.bundle_id:
                raise FrameError("the owner sent another bundle than the one asked for")
            key = SealedBox(self.node.identity.box_key).decrypt(header.sealed_key)

            async def rest() -> AsyncIterator[bytes]:
                if buffer:
                    yield bytes(buffer)
                async for more in chunks:
                    yield more

            return await decode_into(rest(), key, header.bundle_id, make_sink(header.bundle_id), progress,
                                     source="owner", identified=header.identified)

    # -- replica path -------------------------------------------------------------
    async def _replica_holders(self, bundle_id: str, owner: str) -> list[str]:
        ordered: list[str] = []
        dht = self.node.dht
        if dht is not None:  # all slots at once: a dead contact costs one RPC deadline, not one per slot
            results = await asyncio.gather(
                *(dht.get(replica_index_key(self._index, bundle_id, slot))
                  for slot in range(REPLICA_SLOTS)), return_exceptions=True)
            for found in results:
                if isinstance(found, BaseException):
                    continue
                ordered += [r.payload.hex() for r in found.records
                            if r.payload_kind is PayloadKind.NODE_ID and r.publisher.hex() == owner]
        assert self.node.membership is not None
        active = [m.node_id for m in self.node.membership.roster.current.active()]
        ordered += replica_candidates(bundle_id, active, owner)
        return list(dict.fromkeys(h for h in ordered if h != owner and h in active))

    async def _from_replicas(self, ref: SeriesRef, assertion: UserAssertion,
                             make_sink: Callable[[str], InstanceSink], progress: Progress | None,
                             problems: list[str]) -> FetchResult:
        assert ref.bundle_id is not None and ref.owner is not None
        keyshare, replica = self.node.service("keyshare"), self.node.service("replica")
        if keyshare is None or replica is None:
            raise FetchError("the owner is unreachable and this node runs no keyshare/replica service")
        from node.keyshare.gather import KeyUnavailable

        fed = self.node.cfg.federation
        # Key shares, replica holders and the first replica download all start at once.
        holders_task = asyncio.ensure_future(self._replica_holders(ref.bundle_id, ref.owner))
        key_task = asyncio.ensure_future(keyshare.collect_key(  # type: ignore[attr-defined]
            ref.bundle_id, ref.owner, assertion.to_dict(), k=fed.shares_k,
            deadline_s=self.deadline_s / 2))
        sink = make_sink(ref.bundle_id)

        async def holders() -> AsyncIterator[str]:
            """Where the publisher's placement puts the replicas (computed from the roster,
            no waiting), then whatever the DHT records add — awaited only if needed, since
            a lookup can wait an RPC deadline on the dead owner."""
            tried: set[str] = set()
            for holder in self._placement_guess(ref.bundle_id, ref.owner):
                tried.add(holder)
                yield holder
            for holder in await holders_task:
                if holder not in tried:
                    yield holder

        try:
            return await self._stream_from(holders(), ref, key_task, sink, progress, problems, replica)
        except KeyUnavailable as exc:
            raise FetchError("; ".join(problems + [f"key shares: {exc}"])) from None
        finally:
            holders_task.cancel()
            key_task.cancel()
            if key_task.done() and not key_task.cancelled():
                key_task.exception()    # retrieved: a failure no holder waited for is not logged

    def _placement_guess(self, bundle_id: str, owner: str) -> list[str]:
        assert self.node.membership is not None
        fed = self.node.cfg.federation
        active = [m.node_id for m in self.node.membership.roster.current.active()]
        share_holders = set(ranked(bundle_id, active, exclude={owner})[:fed.shares_n])
        return replica_candidates(bundle_id, active, owner, avoid=share_holders)[:fed.replicas]

    async def _stream_from(self, holders: AsyncIterator[str], ref: SeriesRef,
                           key: "asyncio.Future[bytes]", sink: InstanceSink,
                           progress: Progress | None, problems: list[str],
                           replica: Any) -> FetchResult:
        """Each holder in turn; a failed key collection (KeyUnavailable) ends it at once."""
        from node.keyshare.gather import KeyUnavailable

        assert ref.bundle_id is not None
        async for holder in holders:
            try:
                # the decoder checks the bundle id (expected_id): no second hash of the stream
                stream = replica.open_stream(ref.bundle_id, [holder], verify=False)  # type: ignore[attr-defined]
                if asyncio.iscoroutine(stream):
                    stream = await stream
                result = await decode_into(stream, key, ref.bundle_id, sink, progress,
                                           source=f"replica:{holder}", identified=False)
                return replace(result, attempts=tuple(problems))
            except KeyUnavailable:
                raise
            except (PeerError, BundleError, OSError) as exc:
                sink.discard()
                problems.append(f"replica {holder[:12]}: {type(exc).__name__}: {exc}")
            except Exception as exc:  # the replica service's own errors: try the next holder
                sink.discard()
                problems.append(f"replica {holder[:12]}: {type(exc).__name__}")
        raise FetchError("no replica holder delivered an intact bundle: " + "; ".join(problems))


async def decode_into(stream: AsyncIterator[bytes], key: "bytes | asyncio.Future[bytes]",
                      bundle_id: str, sink: InstanceSink, progress: Progress | None, *,
                      source: str, identified: bool) -> FetchResult:
    """Decrypt + decompress as bytes arrive (node/sharing/pipeline.py: receive, decode and
    write overlap); commit the sink only once the bundle verified. A key still on its way
    (a future) lets the download start meanwhile (``read_until_ready``)."""
    try:
        if not isinstance(key, (bytes, bytearray)):
            stream, key = await read_until_ready(stream, key)
        decoder = BundleDecoder(bytes(key), expected_id=bundle_id)
        await decode_stream(stream, decoder, sink.add, progress,
                            recycle=bool(getattr(sink, "reuses_buffers", False)))
    except BaseException:
        sink.discard()
        raise
    outputs = await asyncio.to_thread(sink.commit)
    info = decoder.info
    return FetchResult(info.bundle_id, info.instances, info.stored_bytes, info.plain_bytes, source,
                       identified, outputs)


def local_assertion(node: "Node", user: "User", purpose: str) -> UserAssertion:
    """An assertion this node signs for its own (already authenticated) user; raises
    ``node.users.UserRefused`` when the user record does not allow ``purpose``."""
    from node.users import user_assertion

    return user_assertion(node.identity, user, purpose, now=node.transport.wall_clock())
