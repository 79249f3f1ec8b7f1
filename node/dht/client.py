"""Outgoing RPCs: deadlines, contact failure accounting, reply parsing and paging.

Round trips are measured for ``Liveness`` (lookups' patience). A contact that
misses ``evict_after_failures`` deadlines in a row leaves the routing table (upstream
evicted on the first miss, which churns tables under packet loss) and is remembered as
dead for a while; one miss makes it suspect, so lookups ask others first.
Contacts learnt from replies are kept only if they are members; records from replies
are verified by the keeper before anyone sees them.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from node.dht.codec import DecodeError
from node.dht.config import DHTConfig
from node.dht.ids import Address, Contact
from node.dht.keeper import RecordKeeper
from node.dht.liveness import Liveness
from node.dht.lookup import Reply
from node.dht.membership import Membership
from node.dht.messages import (FindNodeRequest, FindValueRequest, Kind, NodesResponse,
                               StoreRequest, StoreStatus, ValuesResponse, decode_store_ack)
from node.dht.protocol import DHTProtocol
from node.dht.records import Record
from node.dht.value_spans import Span, page_budget, spans_after
from node.dht.routing import RoutingTable
from node.dht.wire import Datagram


class RpcClient:
    def __init__(self, protocol: DHTProtocol, routing: RoutingTable, keeper: RecordKeeper,
                 membership: Membership, stats: Counter[str], config: DHTConfig,
                 liveness: Liveness) -> None:
        self.protocol = protocol
        self.routing = routing
        self.keeper = keeper
        self.membership = membership
        self.stats = stats
        self.config = config
        self.liveness = liveness

    async def call(self, contact: Contact, kind: Kind, body: bytes) -> Datagram | None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        reply = await self.protocol.request(contact.address, kind, body, contact.verify_key,
                                            self.config.rpc_timeout)
        if reply is None:
            if self.protocol.transport is None or self.protocol.transport.is_closing():
                return None   # we are stopping: says nothing about the contact
            self.stats["rpc_deadline_missed"] += 1
            if self.liveness.missed(contact.id):
                self.routing.remove_contact(contact)
                self.stats["contacts_evicted"] += 1
        else:
            self.liveness.answered(contact.id, loop.time() - sent)
        return reply

    async def ping_address(self, address: Address) -> Datagram | None:
        """Ping an address whose node id we do not know yet (bootstrap)."""
        return await self.protocol.request(address, Kind.PING, b"", None,
                                           self.config.rpc_timeout)

    async def ping(self, contact: Contact) -> bool:
        """One probe, no failure accounting (used to test a full bucket's oldest)."""
        return await self.protocol.request(contact.address, Kind.PING, b"", contact.verify_key,
                                           self.config.rpc_timeout) is not None

    def members(self, contacts: list[Contact]) -> list[Contact]:
        kept = [c for c in contacts if self.membership.is_member(c.verify_key)]
        self.stats["contacts_dropped_non_member"] += len(contacts) - len(kept)
        return kept

    def _malformed(self) -> None:
        self.stats["dropped_malformed"] += 1

    async def find_node(self, contact: Contact, target_id: bytes) -> Reply | None:
        dgram = await self.call(contact, Kind.FIND_NODE, FindNodeRequest(target_id).encode())
        if dgram is None:
            return None
        try:
            return Reply(self.members(NodesResponse.decode(dgram.body).contacts))
        except DecodeError:
            self._malformed()
            return None

    async def _values_page(self, contact: Contact, request: FindValueRequest
                           ) -> ValuesResponse | None:
        dgram = await self.call(contact, Kind.FIND_VALUE, request.encode())
        if dgram is None:
            return None
        try:
            page = ValuesResponse.decode(dgram.body)
        except DecodeError:
            self._malformed()
            return None
        if page.key != request.key:
            self._malformed()
            return None
        return page

    async def find_value(self, contact: Contact, key: bytes) -> Reply | None:
        """First page with contacts; if the holder has more, the rest of the publisher-id
        space in ranges paged side by side (``value_spans``). ``truncated``: some range
        still had records when its page budget ran out (``max_value_pages`` in all)."""
        first = await self._values_page(contact, FindValueRequest(key))
        if first is None:
            return None
        records: list[Record] = list(first.records)
        rpcs, truncated = 1, False
        if first.more and self.config.max_value_pages <= 1:
            truncated = True
        elif first.more and first.records:
            spans = spans_after(first.records[-1].publisher, len(first.records),
                                self.config.max_value_streams)
            budget = page_budget(self.config.max_value_pages, len(spans))
            for got, pages, cut in await asyncio.gather(
                    *(self._read_span(contact, key, span, budget) for span in spans)):
                records += got
                rpcs += pages
                truncated = truncated or cut
        return Reply(self.members(first.contacts), self.keeper.verified(records, key), rpcs,
                     truncated)

    async def _read_span(self, contact: Contact, key: bytes, span: Span,
                         budget: int) -> tuple[list[Record], int, bool]:
        """Records-only pages from ``span.after`` until the range ends, the holder has no
        more, stops making progress or goes silent (what it sent so far is kept)."""
        records: list[Record] = []
        after, pages = span.after, 0
        while pages < budget:
            page = await self._values_page(contact, FindValueRequest(key, after, False))
            pages += 1
            if page is None or not page.records or page.records[0].publisher <= after:
                return records, pages, False   # gone or not making progress
            records += [r for r in page.records if span.holds(r.publisher)]
            if not page.more or span.passed(page.records[-1].publisher):
                return records, pages, False
            after = page.records[-1].publisher
        return records, pages, True

    async def store(self, contact: Contact, record: Record) -> StoreStatus | None:
        dgram = await self.call(contact, Kind.STORE, StoreRequest(record).encode())
        if dgram is None:
            return None
        try:
            return decode_store_ack(dgram.body)
        except DecodeError:
            self._malformed()
            return None
