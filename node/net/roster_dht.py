"""The DHT follows the roster: members a newer roster admits are contacted at once, members
it revokes (or drops) leave the routing table.

Without this, a member admitted after a node started reached that node's DHT only if it
happened to send it a datagram, and a datagram that arrived before the roster naming
its sender did was dropped (and the sender then counted this node as dead); a revoked
member stayed in the routing table and kept being sent lookups (which name the keys a
node looks for) until its RPCs had failed often enough.

On every roster this node adopts (``RosterBook.subscribe``):

- every contact whose node id is not an active member of the new roster is removed from
  the routing table (and the removal is counted in the DHT stats);
- every active member that is new in this roster, or whose DHT address changed, is
  pinged at the address the roster gives. Its signed answer proves the address, so the
  DHT adds the contact; our ping in turn tells the new member that we are alive. A
  member that does not answer (not running yet) is not retried here: when it starts it
  pings every member of its roster itself.

At start, a node that brings a saved routing table (a restart) looks itself up through
it, so members that wrote it off while it was down hear from it again at once (an
empty table is filled by the index publisher's bootstrap through a sample of the roster,
``DHTServer.join_through``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from node.dht.server import DHTServer
from node.net.roster import Roster, split_address
from node.net.rosterbook import RosterBook

log = logging.getLogger("medfed.roster")


class RosterDHTSync:
    """Keeps ``dht``'s routing table in step with the rosters ``book`` adopts."""

    def __init__(self, dht: DHTServer, book: RosterBook, own_id: str) -> None:
        self.dht = dht
        self.book = book
        self.own_id = own_id
        self._previous: Roster = book.current
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribed = False

    def start(self) -> None:
        if not self._subscribed:
            self._previous = self.book.current
            self.book.subscribe(self._on_adopted)
            self._subscribed = True
        if len(self.dht.routing) > 0:
            self._spawn(self._announce())

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:   # adopted outside a running loop (offline tools): nothing to do
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self) -> None:
        if self.dht.running:
            known = await self.dht.bootstrap((), refresh=False)
            log.info("DHT: back with %d known contact(s)", known)

    async def stop(self) -> None:
        if self._subscribed:
            self.book.unsubscribe(self._on_adopted)
            self._subscribed = False
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the listener (sync, called by RosterBook.offer) --------------------------------
    def _on_adopted(self, roster: Roster) -> None:
        previous, self._previous = self._previous, roster
        forgotten = self.forget_non_members(roster)
        if forgotten:
            log.info("DHT: %d contact(s) no longer active in roster v%d removed from the "
                     "routing table", forgotten, roster.version)
        before = {m.node_id: m.dht_address for m in previous.active()}
        added = [m for m in roster.active() if m.node_id != self.own_id
                 and before.get(m.node_id) != m.dht_address]
        if not added:
            return
        addresses = []
        for member in added:
            try:
                addresses.append(split_address(member.dht_address))
            except ValueError:
                log.warning("DHT: member %s has an unusable DHT address in roster v%d",
                            member.name, roster.version)
        self._spawn(self._contact(addresses))

    def forget_non_members(self, roster: Roster) -> int:
        """Drop routing contacts that ``roster`` does not list as active; returns how many."""
        active = {m.node_id for m in roster.active()}
        removed = 0
        for bucket in self.dht.routing.buckets:   # replacements first: none may move up
            for node_id in [i for i in bucket.replacement_nodes if i.hex() not in active]:
                del bucket.replacement_nodes[node_id]
        while gone := [c for c in self.dht.routing.contacts() if c.id.hex() not in active]:
            for contact in gone:
                self.dht.routing.remove_contact(contact)
            removed += len(gone)
        self.dht.stats["contacts_removed_by_roster"] += removed
        return removed

    async def _contact(self, addresses: list[tuple[str, int]]) -> None:
        if not self.dht.running:
            return
        answers = await asyncio.gather(*(self.dht.ping(a) for a in addresses),
                                       return_exceptions=True)
        reached = sum(1 for a in answers if isinstance(a, float))
        self.dht.stats["roster_members_contacted"] += reached
        log.info("DHT: %d of %d member(s) new in the roster answered", reached, len(addresses))
