"""One DHT node: lifecycle, bootstrap, publish / get, republish, expiry, persistence.

No global state: everything hangs off the ``DHTServer`` instance, so the simulator can
run hundreds in one process, each with its own socket, store, stats and link model.
A node publishes its own records and re-signs them before they expire (publisher-driven
republish); holders drop records at expiry. Results carry lookup statistics (hops,
RPCs) for the simulator's report.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kademlia.node import Node
from kademlia.routing import KBucket

from node.dht.client import RpcClient
from node.dht.config import DHTConfig
from node.dht.ids import Address, Contact, contact_of, distance, random_id_between, target
from node.dht.keeper import RecordKeeper, newest_per_publisher
from node.dht.liveness import Liveness
from node.dht.link import LinkModel
from node.dht.lookup import LookupOutcome, LookupStats, iterative_lookup
from node.dht.membership import Membership
from node.dht.messages import StoreStatus
from node.dht.protocol import DHTProtocol
from node.dht.records import PayloadKind, Record, sign_record
from node.dht.routing import RoutingTable
from node.dht.routing_state import RoutingStateError, load_routing_file, save_routing_file
from node.dht.service import RequestService
from node.dht.storage import MemoryRecordStore, RecordStore
from node.dht.wire import Datagram
from node.identity import NodeIdentity
from node.net.transport import SOCKETS, Transport
from node.tasks import TaskSet

log = logging.getLogger(__name__)


MAX_CHALLENGES = 64   # address challenges in flight at once (a flood costs a bounded set)


def _loop_time() -> float:
    """The event loop's clock (virtual in the simulator, monotonic otherwise)."""
    return asyncio.get_running_loop().time()


class DHTStateError(RuntimeError):
    """The DHT node was used while stopped, or started twice."""


@dataclass(frozen=True)
class PublishResult:
    accepted: int          # holders that now have this record (stored or already newer)
    refused: int           # holders that refused it (invalid, full)
    unreachable: int       # holders that missed the deadline
    stored_locally: bool
    lookup: LookupStats


@dataclass(frozen=True)
class GetResult:
    records: list[Record]  # verified, unexpired, newest per publisher
    lookup: LookupStats
    truncated: bool = False   # a holder had more records than one read fetches


# store answers that mean the holder has the record (STALE: it already held it, or newer)
_TAKEN = frozenset({StoreStatus.STORED, StoreStatus.STALE})


@dataclass
class _Publication:
    record: Record
    ttl_ms: int
    holders: list[Contact] = field(default_factory=list)  # the k closest the last lookup found
    found_at: float = float("-inf")                        # loop time of that lookup
    local: bool = False                                    # we were among them


class DHTServer:
    def __init__(self, identity: NodeIdentity, membership: Membership,
                 config: DHTConfig | None = None, storage: RecordStore | None = None,
                 link: LinkModel | None = None, clock: Callable[[], float] | None = None,
                 transport: Transport = SOCKETS) -> None:
        self.identity = identity
        self.membership = membership
        self.config = config or DHTConfig()
        self._link = link
        self.stats: Counter[str] = Counter()
        self._transport = transport
        self._clock = clock or transport.wall_clock
        self._rng = random.Random(identity.node_id)   # bucket refresh targets: repeatable
        self.routing = RoutingTable(Node(identity.node_id), self.config.k,
                                    on_full=self._probe_head,
                                    lonely_after=self.config.refresh_interval)
        self.keeper = RecordKeeper(storage or MemoryRecordStore(), membership, self.stats,
                                   self.now_ms, int(self.config.max_record_ttl * 1000),
                                   int(self.config.max_skew * 1000),
                                   self.config.max_records_per_publisher)
        self.liveness = Liveness(_loop_time, self.config.rpc_timeout_min,
                                 self.config.rpc_timeout, self.config.suspect_for,
                                 self.config.evict_after_failures)
        self._service = RequestService(self.routing, self.keeper, self.config.k)
        self._protocol: DHTProtocol | None = None
        self._client: RpcClient | None = None
        self._published: dict[bytes, _Publication] = {}
        self._last_issued = 0
        self._tasks = TaskSet()   # upkeep and straggling RPCs, in start order
        self._probing: set[bytes] = set()
        self._challenging: set[bytes] = set()
        self._last_refresh = self._last_save = -1.0   # loop time; set at start

    # -- lifecycle -----------------------------------------------------------------
    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    @property
    def running(self) -> bool:
        return self._protocol is not None

    @property
    def address(self) -> Address:
        return self._require().local_address

    @property
    def link(self) -> LinkModel | None:
        return self._link

    @link.setter
    def link(self, link: LinkModel | None) -> None:
        """Swap the link model at run time (the simulator changes faults mid-run)."""
        self._link = link
        if self._protocol is not None:
            self._protocol.link = link

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        if self._protocol is not None:
            raise DHTStateError("DHT node is already started")
        saved = (load_routing_file(self.config.routing_path, self.node_id)
                 if self.config.routing_path else [])
        protocol = DHTProtocol(self.identity, self.membership, self.stats,
                               self._service.handle, self._learn, self._link,
                               self.config.max_skew, self.config.max_inflight, self._clock)
        try:
            await self._transport.open_datagram(lambda: protocol, host, port)
        except OSError as exc:
            raise DHTStateError(
                f"cannot listen for DHT datagrams on {host}:{port} ({exc.strerror}); "
                "choose a free DHT port in the node configuration") from exc
        self._protocol = protocol
        self._last_refresh = self._last_save = _loop_time()
        self._client = RpcClient(protocol, self.routing, self.keeper, self.membership,
                                 self.stats, self.config, self.liveness)
        for contact in saved:
            if self.membership.is_member(contact.verify_key):
                self.routing.add_contact(contact)
        self._spawn(self._maintain())
        return protocol.local_address

    async def stop(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        self._protocol = None
        tasks = self._tasks.take()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        protocol.close()
        await protocol.drain()
        try:
            self.save_routing_table()
        except RoutingStateError as exc:   # stopping must still complete
            self.stats["routing_save_errors"] += 1
            log.warning("%s", exc)

    def _require(self) -> DHTProtocol:
        if self._protocol is None:
            raise DHTStateError("DHT node is not running; call start() first")
        return self._protocol

    def _rpc(self) -> RpcClient:
        self._require()
        assert self._client is not None
        return self._client

    def _adopt(self, stragglers: list[asyncio.Future[Any]]) -> None:
        """RPCs a finished lookup no longer waits for run on to their deadline, so a
        dead contact is still noticed; stop() cancels them."""
        for future in stragglers:
            self._tasks.add(future)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

    # -- routing upkeep ------------------------------------------------------------
    def _learn(self, dgram: Datagram, address: Address, proven: bool) -> None:
        """Every authenticated member we hear from refreshes our routing table — but a
        new or changed address is taken only from a reply that proves it; an address a
        request merely claims (anyone may re-send a captured datagram from anywhere) is
        challenged first, unless it is the address the signed roster lists for that
        member: a replay from elsewhere still is (a spoofed source can only claim the
        member's own address). 300 simulated nodes: a quarter of the DHT requests while
        the federation formed were such challenges."""
        self.liveness.heard_from(dgram.sender_id)
        try:
            contact = contact_of(dgram.sender_key, address[0], address[1])
        except ValueError:
            self.stats["contacts_unaddressable"] += 1
            return
        known = self.routing.get_contact(contact.id)
        if proven or (known is not None and known.address == contact.address):
            self.routing.add_contact(contact)
        elif self.membership.listed_address(dgram.sender_key) == contact.address:
            self.stats["addresses_roster_listed"] += 1   # the CA-signed roster vouches
            self.routing.add_contact(contact)
        elif known is None and not self.routing.takes(contact) and self._head_live(contact):
            self.stats["address_challenges_unneeded"] += 1
        else:
            self._challenge(contact)

    def _head_live(self, node: Node) -> bool:
        """Has the oldest contact of ``node``'s (full) bucket been heard from within
        ``live_for``? Then a newcomer could only enter the bucket's replacement cache
        and the probe of the oldest would find it alive: a request from an unknown
        member changes nothing, so it is neither challenged nor the oldest probed.
        (In a federation much larger than a table most requests come from members not
        in it: 300 simulated nodes, one hour, 61,000 challenges and 70,000 probes, a
        quarter of all DHT requests; 200 nodes: 63 % of probed heads had been heard
        within 10 s. With live_for 60 s the hour's pings fell to 50,000, 900 s: 27,000.) Contacts learnt from replies still fill the replacement caches,
        and one not heard from for ``live_for`` is probed as before."""
        head = self.routing.head_for(node)
        return head is not None and self.liveness.heard_since(
            head.id, _loop_time() - self.config.live_for)

    def _challenge(self, contact: Contact) -> None:
        """Ping the claimed address, addressed to the claimed node with a fresh msg id:
        only that node can answer, and its pong (a proven reply) updates the table.
        Until then nothing changes; an unanswered challenge costs the contact nothing."""
        if (contact.id in self._challenging or len(self._challenging) >= MAX_CHALLENGES
                or self._protocol is None):
            self.stats["address_challenges_skipped"] += 1
            return
        self._challenging.add(contact.id)
        self.stats["address_challenges"] += 1

        async def challenge() -> None:
            try:
                await self._rpc().ping(contact)
            finally:
                self._challenging.discard(contact.id)

        self._spawn(challenge())

    def _probe_head(self, head: Contact) -> None:
        """A full bucket: keep its oldest contact only if it still answers."""
        if head.id in self._probing or self._protocol is None:
            return
        if self.liveness.heard_since(head.id, _loop_time() - self.config.live_for):
            self.stats["head_probes_unneeded"] += 1   # heard from lately: it is alive
            return
        self._probing.add(head.id)

        async def probe() -> None:
            try:
                if not await self._rpc().ping(head):
                    self.routing.remove_contact(head)
            finally:
                self._probing.discard(head.id)

        self._spawn(probe())

    def save_routing_table(self) -> None:
        """Write the routing table JSON now (also done periodically and at stop)."""
        if self.config.routing_path is not None:
            save_routing_file(self.config.routing_path, self.node_id, self.routing.contacts())
            self._last_save = _loop_time()

    async def ping(self, address: Address) -> float | None:
        """Round-trip time in seconds to a DHT node, or None when it did not answer."""
        started = _loop_time()
        reply = await self._rpc().ping_address(address)
        return None if reply is None else _loop_time() - started

    async def bootstrap(self, addresses: Iterable[Address] = (), refresh: bool = True) -> int:
        """Join via known addresses (and/or the saved table); returns contacts known."""
        client = self._rpc()
        await asyncio.gather(*(client.ping_address(a) for a in addresses))
        if len(self.routing) == 0:
            return 0
        await self.find_node(self.node_id)
        if refresh:
            await self._refresh(self.routing.buckets)
        return len(self.routing)

    async def join_through(self, addresses: Sequence[Address], sample: int = 0) -> int:
        """Join via some of ``addresses`` (a roster's members): first a repeatable random
        sample of ``sample`` of them (default 2k), the rest only if none of those
        answered. A Kademlia join needs one live contact and a self-lookup; pinging
        every member made each start O(members) and a federation's start O(members²)
        (1,000 simulated members: 10⁶ pings). Returns contacts known."""
        sample = sample or 2 * self.config.k
        if len(addresses) <= sample:
            return await self.bootstrap(addresses)
        rng = random.Random(self.node_id + b"join")
        first = rng.sample(list(addresses), sample)
        known = await self.bootstrap(first)
        if known == 0:
            chosen = set(first)
            known = await self.bootstrap([a for a in addresses if a not in chosen])
        return known

    async def _refresh(self, buckets: list[KBucket]) -> None:
        own = self.routing.get_bucket_for(Node(self.node_id))
        ids = [random_id_between(b.range[0], b.range[1], self._rng)
               for i, b in enumerate(self.routing.buckets) if b in buckets and i != own]
        await asyncio.gather(*(self.find_node(i) for i in ids))
        self._last_refresh = _loop_time()

    # -- lookups -------------------------------------------------------------------
    async def find_node(self, target_id: bytes, *, hurry: bool = False) -> LookupOutcome:
        """The k closest live nodes. Without ``hurry`` (publishing, joining) every
        contact gets its full RPC deadline, so records land on the true k closest even
        on a slow network; reads (``get``) hurry past contacts that seem dead."""
        client = self._rpc()
        seeds = self.routing.find_neighbors(target(target_id), 2 * self.config.k)
        return await iterative_lookup(target_id, seeds, lambda c: client.find_node(c, target_id),
                                      self.config.k, self.config.alpha, self.node_id,
                                      skip=self.liveness.is_suspect,
                                      patience=self.liveness.deadline if hurry else None,
                                      leftover=self._adopt, gave_up=self.liveness.suspect)

    async def get(self, key: bytes) -> GetResult:
        """All verified records under ``key`` from the k closest holders (and us)."""
        client = self._rpc()
        seeds = self.routing.find_neighbors(target(key), 2 * self.config.k)
        outcome = await iterative_lookup(key, seeds, lambda c: client.find_value(c, key),
                                         self.config.k, self.config.alpha, self.node_id,
                                         skip=self.liveness.is_suspect,
                                         patience=self.liveness.deadline
                                         if self.config.hurry_reads else None,
                                         leftover=self._adopt, gave_up=self.liveness.suspect,
                                         answering=self.liveness.heard_since)
        found = [r for reply in outcome.replies.values() for r in reply.records]
        return GetResult(newest_per_publisher(await self.keeper.local(key) + found),
                         outcome.stats, any(r.truncated for r in outcome.replies.values()))

    # -- publishing ----------------------------------------------------------------
    async def publish(self, key: bytes, count: int, payload_kind: PayloadKind = PayloadKind.NONE,
                      payload: bytes = b"", ttl: float | None = None) -> PublishResult:
        """Sign a record for ``key`` and store it on the k closest nodes; it is
        republished until ``unpublish(key)``. Raises ``RecordError`` for bad fields."""
        self._require()
        ttl_ms = int((ttl or self.config.record_ttl) * 1000)
        if ttl_ms > self.config.max_record_ttl * 1000:
            raise ValueError(f"record ttl {ttl}s exceeds max_record_ttl "
                             f"{self.config.max_record_ttl}s")
        record = self._sign(key, count, payload_kind, payload, ttl_ms)
        pub = self._published[key] = _Publication(record, ttl_ms)
        return await self._store_everywhere(pub)

    def unpublish(self, key: bytes) -> None:
        """Stop republishing; holders drop the record when it expires."""
        self._published.pop(key, None)

    def _sign(self, key: bytes, count: int, kind: PayloadKind, payload: bytes,
              ttl_ms: int) -> Record:
        issued = max(self.now_ms(), self._last_issued + 1)  # strictly newer every time
        self._last_issued = issued
        return sign_record(self.identity, key, count, issued, issued + ttl_ms, kind, payload)

    async def _store_everywhere(self, pub: _Publication) -> PublishResult:
        """Store ``pub.record`` on the k closest nodes: found by a lookup, except on a
        republish whose holders a lookup found within ``republish_lookup_after`` — then
        the record goes straight to them, and only if one of them does not take it (gone,
        full) or our own table knows a closer live contact is the lookup done after all
        (the new holders that already have it are not asked twice)."""
        record, stored_here = pub.record, False
        if self._holders_current(pub):
            stored_here = pub.local
            acks = await self._store_on(pub.holders, record, pub.local)
            if all(a in _TAKEN for a in acks):
                self.stats["republish_lookups_spared"] += 1
                self.stats["records_published"] += 1
                return PublishResult(len(acks), 0, 0, pub.local, LookupStats())
            self.stats["republish_lookups_needed"] += 1
            placed = {c.id for c, a in zip(pub.holders, acks) if a in _TAKEN}
        else:
            placed = set()
        outcome = await self.find_node(record.key)
        holders = outcome.closest[:self.config.k]
        local = len(holders) < self.config.k or (
            distance(self.node_id, record.key) < distance(holders[-1].id, record.key))
        fresh = [c for c in holders if c.id not in placed]
        acks = [StoreStatus.STORED] * (len(holders) - len(fresh))
        acks += await self._store_on(fresh, record, local and not stored_here)
        pub.holders, pub.found_at, pub.local = holders, _loop_time(), local
        accepted = sum(1 for a in acks if a in _TAKEN)
        unreachable = sum(1 for a in acks if a is None)
        self.stats["records_published"] += 1
        return PublishResult(accepted, len(acks) - accepted - unreachable, unreachable,
                             local, outcome.stats)

    async def _store_on(self, holders: list[Contact], record: Record,
                        local: bool) -> list[StoreStatus | None]:
        client = self._rpc()
        if local:
            await self.keeper.accept(record)
        return list(await asyncio.gather(*(client.store(c, record) for c in holders)))

    def _holders_current(self, pub: _Publication) -> bool:
        """May a republish skip the lookup? Its holders were found lately, there are k of
        them (a smaller federation may have grown), none is suspect, and no live
        contact of our own table is closer to the key than the farthest of them (a node
        that joined or came back near the key: then a lookup places the record on it)."""
        k = self.config.k
        if len(pub.holders) < k or _loop_time() - pub.found_at >= self.config.republish_lookup_after:
            return False
        if any(self.liveness.is_suspect(c.id) for c in pub.holders):
            return False
        key = pub.record.key
        farthest = max(distance(c.id, key) for c in pub.holders)
        ids = {c.id for c in pub.holders}
        return not any(c.id not in ids and distance(c.id, key) < farthest
                       and not self.liveness.is_suspect(c.id)
                       for c in self.routing.find_neighbors(target(key), k))

    # -- maintenance ---------------------------------------------------------------
    async def maintain_once(self) -> None:
        """Expire held records, republish our own, refresh idle buckets, save table."""
        await self.keeper.sweep()
        now = self.now_ms()
        for key, pub in list(self._published.items()):
            if now >= pub.record.issued_ms + pub.ttl_ms * self.config.republish_after:
                old = pub.record
                pub.record = self._sign(key, old.count, old.payload_kind, old.payload,
                                        pub.ttl_ms)
                await self._store_everywhere(pub)
                self.stats["records_republished"] += 1
        mono = _loop_time()
        if mono - self._last_refresh >= self.config.refresh_interval:
            await self._refresh(self.routing.lonely_buckets())
        if mono - self._last_save >= self.config.save_interval:
            self.save_routing_table()

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.maintenance_interval)
            try:
                await self.maintain_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["maintenance_errors"] += 1
                log.exception("DHT maintenance step failed; will retry next tick")

