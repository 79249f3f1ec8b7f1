"""Roster gossip: every running member adopts a newer CA-signed roster within a bound.

Two mechanisms, both carrying only the CA-signed roster (so a member can delay a
roster but never forge or roll one back):

- **Push on change.** When this node adopts a newer roster (handed over by the operator
  with `medfed federation publish`, pushed by a peer, or pulled), it offers it to
  ``push_fanout`` random active members, and to every member the new roster revokes (so
  a revoked node learns it). Every member that adopts pushes on in turn: the roster
  floods the federation in a few hops.
- **Anti-entropy.** Once at start and then every ``pull_interval_s`` (jittered ±50 %), the
  node tells ``pull_peers`` random members which roster version it holds (a few bytes,
  not the roster: a roster of N members is O(N) to send and to check, and N members
  doing this every round made gossip O(N²) per round), fetches theirs when the answer
  names a newer version and sends its own when the answer names an older one. A node that was offline, or missed every push, catches
  up at its next round; a node whose roster does not yet list the peer is handled by
  the offer itself (the peer adopts the newer roster that lists us).
  The period backs off while nothing changes, as Trickle does (RFC 6206): a round in
  which every member that answered holds our version doubles the period, up to
  ``pull_max_factor`` × ``pull_interval_s`` (16 × 10 s); adopting a roster, or hearing a
  different version, starts again at ``pull_interval_s``. So after every change all the
  members that have the new roster offer it at the fast rate — which is what repairs a
  member that missed the pushes (an offer to a member holding an older version hands it
  the roster) — and a quiet federation of N members sends N × 3 / 160 version offers a
  second instead of N × 3 / 10 (1,000 simulated members: 19 instead of 300).

Bound (stated in the README, tested): a member reachable from the member that got the
roster adopts it within one push round (one peer call, ``call_timeout_s``); one that
missed the pushes within about ``pull_interval_s × (members / pull_peers)`` in the worst
case, and typically within one or two rounds (measured in ``bench/roster_gossip.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.net.client import PeerClient
from node.net.errors import PeerError, PeerRefused
from node.net.roster import Member, Roster, RosterError
from node.net.rosterbook import RosterBook
from node.net.server import ROSTER_PATH
from node.tasks import TaskSet

log = logging.getLogger("medfed.roster")


@dataclass(frozen=True)
class GossipSettings:
    push_fanout: int = 6           # members a newly adopted roster is pushed to
    pull_interval_s: float = 10.0  # anti-entropy period (0 = only at start)
    pull_peers: int = 3            # members asked per anti-entropy round
    call_timeout_s: float = 5.0    # deadline of one roster exchange
    pull_max_factor: int = 16      # quiet rounds back off up to this × pull_interval_s

    @classmethod
    def from_federation(cls, fed: Any) -> "GossipSettings":
        return cls(fed.roster_push_fanout, fed.roster_pull_interval_s, fed.roster_pull_peers)


@dataclass
class PeerContact:
    """What this node last heard from one member (for `medfed status`)."""

    last_ok: float = 0.0           # wall time of the last successful exchange
    last_error: str = ""
    their_version: int = 0


@dataclass
class GossipState:
    contacts: dict[str, PeerContact] = field(default_factory=dict)
    adopted_at: float = 0.0        # wall time the current roster was adopted here
    revoked_at_version: int = 0    # > 0: this node is revoked since that roster version


class RosterGossip:
    """Spreads the roster held in ``book`` (start/stop with the peer server)."""

    def __init__(self, node_id: str, book: RosterBook, client: PeerClient,
                 settings: GossipSettings = GossipSettings(), *,
                 rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.book = book
        self.client = client
        self.settings = settings
        self.state = GossipState(adopted_at=time.time())
        self._rng = rng or random.Random()
        self._tasks = TaskSet()   # pushes in flight, in start order
        self._loop_task: asyncio.Task[None] | None = None
        self._previous: Roster = book.current
        self._subscribed = False
        self._interval = settings.pull_interval_s      # Trickle: grows while quiet
        self._wake: asyncio.Future[bool] | None = None  # True: the period was reset
        self._check_revoked(book.current)

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        if not self._subscribed:
            self.book.subscribe(self._on_adopted)
            self._subscribed = True
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._subscribed:
            self.book.unsubscribe(self._on_adopted)
            self._subscribed = False
        tasks = [t for t in (self._loop_task, *self._tasks.take()) if t is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def revoked(self) -> bool:
        return self.state.revoked_at_version > 0

    # -- push on change ------------------------------------------------------------
    def _on_adopted(self, roster: Roster) -> None:
        """RosterBook listener (sync): note it, then push in the background."""
        previous, self._previous = self._previous, roster
        self.state.adopted_at = time.time()
        log.info("roster v%d adopted (%s): %d active members, %d revoked", roster.version,
                 roster.federation, len(roster.active()), len(roster.revoked))
        self._check_revoked(roster)
        self._reset_period()
        if self.revoked or self._loop_task is None:
            return
        newly_revoked = [m for m in roster.members if m.node_id in roster.revoked
                         and previous.member(m.node_id) is not None]
        targets = self._sample(self.settings.push_fanout) + newly_revoked
        task = asyncio.get_running_loop().create_task(self._exchange_all(targets))
        self._tasks.add(task)

    def _check_revoked(self, roster: Roster) -> None:
        if roster.status(self.node_id) == "revoked" and not self.revoked:
            self.state.revoked_at_version = roster.version
            log.error("THIS NODE HAS BEEN REVOKED from federation %r (roster v%d): other "
                      "members refuse it from now on. Ask the federation operator; a new "
                      "admission needs new node keys.", roster.federation, roster.version)

    # -- anti-entropy --------------------------------------------------------------
    async def _run(self) -> None:
        await self.round()   # catch up at start (and tell peers about us)
        base = self.settings.pull_interval_s
        if base <= 0:
            return
        while True:
            if await self._pause(self._interval * self._rng.uniform(0.5, 1.5)):
                continue     # the period was reset: wait the short one instead
            quiet = await self.round()
            if quiet is None:
                continue     # nobody answered: nothing learnt either way
            self._interval = (min(self._interval * 2, base * self.settings.pull_max_factor)
                              if quiet else base)

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if ``_reset_period`` cut it short."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[bool] = loop.create_future()
        self._wake = wake
        timer = loop.call_later(delay, lambda: wake.done() or wake.set_result(False))
        try:
            return await wake
        finally:
            timer.cancel()
            self._wake = None

    def _reset_period(self) -> None:
        """Something changed: back to the fast period (and stop a longer wait now)."""
        self._interval = self.settings.pull_interval_s
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(True)

    async def round(self) -> bool | None:
        """One anti-entropy round with ``pull_peers`` random members. True: every member
        that answered holds our version (quiet); False: one held another; None: nobody
        answered."""
        if self.revoked:
            return None   # nothing left to learn; peers refuse us anyway
        ours = self.book.current.version
        versions = await asyncio.gather(*(self._exchange(m, full=False)
                                          for m in self._sample(self.settings.pull_peers)))
        heard = [v for v in versions if v is not None]
        if not heard:
            return None
        quiet = all(v == ours for v in heard) and self.book.current.version == ours
        if not quiet:
            self._reset_period()
        return quiet

    def _sample(self, count: int) -> list[Member]:
        others = [m for m in self.book.current.active() if m.node_id != self.node_id]
        if count >= len(others):
            return others
        return self._rng.sample(others, max(0, count))

    async def _exchange_all(self, members: list[Member], *, full: bool = True) -> None:
        await asyncio.gather(*(self._exchange(m, full=full) for m in members))

    async def _exchange(self, member: Member, *, full: bool = True) -> int | None:
        """Offer our roster (``full=False``: first only its version, and the whole roster
        only if theirs is older or they do not know us); fetch theirs when they hold a
        newer one. Returns the version they named first (-1: they wanted ours whole),
        None if the exchange failed. Never raises."""
        contact = self.state.contacts.setdefault(member.node_id, PeerContact())
        timeout = self.settings.call_timeout_s
        try:
            try:
                version = first = None if full else await self._offer_version(member, timeout)
                if version is None or (isinstance(version, int)
                                       and version < self.book.current.version):
                    answer = await self.client.call(member, "POST", ROSTER_PATH,
                                                    self.book.signed.to_dict(), timeout=timeout,
                                                    allow_revoked=True)
                    version = answer.get("version")
            except PeerRefused as exc:
                if exc.code != "revoked":
                    raise
                version = first = None   # we are revoked there: read the roster that says so
            if version is None or (isinstance(version, int)
                                   and version > self.book.current.version):
                self._adopt(member, await self.client.call(member, "GET", ROSTER_PATH,
                                                           timeout=timeout, allow_revoked=True))
            contact.last_ok, contact.last_error = time.time(), ""
            contact.their_version = version if isinstance(version, int) else contact.their_version
            return first if isinstance(first, int) else -1
        except (PeerError, RosterError, OSError) as exc:
            contact.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.debug("roster exchange with %s failed: %s", member.name, contact.last_error)
        except ValueError as exc:   # a member's address in the roster is unusable
            contact.last_error = f"bad address: {exc}"[:200]
        return None

    async def _offer_version(self, member: Member, timeout: float) -> int | None:
        """Tell ``member`` only which roster version we hold; its answer names its own.
        None: it wants the whole roster (it does not list us yet, or predates digests)."""
        try:
            answer = await self.client.call(member, "POST", ROSTER_PATH,
                                            {"version": self.book.current.version},
                                            timeout=timeout, allow_revoked=True)
        except PeerRefused as exc:
            if exc.code in ("not_member", "bad_roster"):
                return None
            raise
        version = answer.get("version")
        return version if isinstance(version, int) else None

    def _adopt(self, member: Member, doc: Mapping[str, Any]) -> None:
        try:
            self.book.offer(doc)
        except RosterError as exc:
            log.warning("member %s sent a roster this node refuses: %s", member.name, exc)
            raise
