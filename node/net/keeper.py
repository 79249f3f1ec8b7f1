"""Warm connections to the members a node asks: TCP + TLS paid once, not per query.

A new peer connection costs 2 round trips (TCP, then TLS 1.3) before the request; a
federated query that first contacts its sites pays them on top of the DHT lookup and
the request (bench/RESULTS.md, "Federated queries with nodes down"). ``PeerKeeper``
keeps a bounded set of members' connections open and re-opens them when they drop:

- which members (deterministic): those this node asked most recently (within the
  idle timeout), then a sample of the roster's active members ranked by a hash of
  (own id, member id) — stable across roster changes, and spread evenly: each member
  is in about ``warm_peers`` others' samples, so a 1,000-member federation holds
  ~32,000 connections, not 1,000 × 1,000. At most ``warm_peers`` members at a time;
- when: at start, on every adopted roster (revoked members' connections are closed),
  and when a member not yet kept is asked (its connection is then adopted, no dial);
- how: a connection is opened by a signed ``GET /v1/ping`` (mTLS proven both ways) and
  stays in the peer client's pool (keep-alive, idle timeout from the config). A kept
  connection nothing else used for ``keepalive_s`` (just under the idle timeout) carries
  another ping, so it stays open instead of idling out and being dialled again (1,000
  simulated members: 142,000 such drops and redials an hour, each a new connection).
  The idle timeout is 30 min (``node.net.idle``: TCP keep-alive, not this ping, keeps
  NATs and firewalls awake), so that is one ping per ~28 min per idle kept connection.
  When it closes — the peer restarted, the host went down — the keeper hears it (the
  connection's close event, no polling) and dials again after a seeded, exponential
  backoff, for as long as the member is kept. Every dial has a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from node.net.client import PeerClient, PeerConnection
from node.net.errors import PeerError, PeerTimeout, PeerUnreachable
from node.net.idle import PEER_IDLE_TIMEOUT_S
from node.net.roster import Member, Roster
from node.net.rosterbook import RosterBook
from node.net.server import PING_PATH, ROSTER_PATH
from node.tasks import TaskSet, cancel_and_wait

log = logging.getLogger("medfed.keeper")


@dataclass(frozen=True)
class KeeperSettings:
    warm_peers: int = 32             # members whose connections are kept open (0: none)
    idle_timeout_s: float = PEER_IDLE_TIMEOUT_S  # a pooled connection nobody uses closes after this
    dial_deadline_s: float = 5.0     # one dial: TCP + TLS + the ping's answer
    backoff_first_s: float = 1.0     # first redial after a drop or a failed dial
    backoff_max_s: float = 300.0     # redials of a member that stays away: this often
                                     # (× a seeded 0.5..1; 60 s: 1,000 simulated members,
                                     # 10 %/h churn, 95,000 failed redials in an hour)

    @property
    def keepalive_s(self) -> float:
        """A kept connection unused this long carries a ping: before the pool's idle
        timeout by a dial deadline (the ping's own bound) or a twentieth of it."""
        return max(self.idle_timeout_s - max(self.dial_deadline_s, self.idle_timeout_s / 20),
                   self.idle_timeout_s / 2)

    def __post_init__(self) -> None:
        if self.warm_peers < 0 or self.idle_timeout_s <= 0 or self.dial_deadline_s <= 0:
            raise ValueError("warm_peers must be >= 0, idle timeout and dial deadline > 0")
        if not 0 < self.backoff_first_s <= self.backoff_max_s:
            raise ValueError("backoff must satisfy 0 < backoff_first_s <= backoff_max_s")


@dataclass
class _Kept:
    """One kept member: its live connection (if any) and its redial state."""

    member: Member
    connection: PeerConnection | None = None
    opened_at: float = 0.0
    used_at: float = 0.0               # loop time of the last answer over ``connection``
    keepalive: asyncio.TimerHandle | None = None
    failures: int = 0
    down_since: float | None = None    # loop time of the first failed dial since it answered
    dialing: "asyncio.Task[None] | None" = None
    redial: asyncio.TimerHandle | None = None


def sample_rank(own_id: str, roster: Roster) -> list[Member]:
    """Active members other than ``own_id``, in this node's seeded order (rendezvous hash)."""
    def score(member: Member) -> bytes:
        return hashlib.sha256(f"medfed-warm:{own_id}:{member.node_id}".encode()).digest()
    return sorted((m for m in roster.active() if m.node_id != own_id), key=score)


# Answers that do not make a member "recently asked": the keeper's own dials, and roster
# anti-entropy (a few random members every round). Counting gossip as asking replaced
# the kept sample with whichever members gossip had picked last: a kept set that turned
# over every few rounds, and a dial for every member it took in (300 simulated members,
# one quiet minute: 4,755 pings beside 5,334 roster exchanges).
BACKGROUND_PATHS = frozenset({PING_PATH, ROSTER_PATH})

# A keep-alive due this close is due now: ``used_at + keepalive_s - now`` can come out a
# rounding error above zero, and a timer that short fires at the same virtual instant
# again and again (it did: an endless loop at t = 1,140 s in a virtual-time test).
_CLOCK_SLACK_S = 1e-3


class PeerKeeper:
    """Keeps ``settings.warm_peers`` members' connections of ``client`` warm."""

    def __init__(self, client: PeerClient, book: RosterBook, own_id: str,
                 settings: KeeperSettings = KeeperSettings(), *,
                 rng: random.Random | None = None) -> None:
        self.client = client
        self.book = book
        self.own_id = own_id
        self.settings = settings
        self._rng = rng or random.Random(own_id)
        self._kept: dict[str, _Kept] = {}
        self._recent: OrderedDict[str, float] = OrderedDict()   # node id -> last asked
        self._ranked: tuple[int, list[Member]] = (-1, [])       # (roster version, sample)
        self._running = False
        self._ending = TaskSet()   # cancelled dials, awaited at stop (in cancel order)
        self.stats: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Choose the members to keep and dial them (needs the running loop)."""
        if self._running or self.settings.warm_peers == 0:
            return
        self._running = True
        self.book.subscribe(self._on_roster)
        self.client.answered.append(self._on_answer)
        self._choose()

    async def stop(self) -> None:
        """Stop dialling and close every kept connection; returns when no task is left."""
        if not self._running:
            return
        self._running = False
        self.book.unsubscribe(self._on_roster)
        if self._on_answer in self.client.answered:
            self.client.answered.remove(self._on_answer)
        kept, self._kept = list(self._kept.values()), {}
        for k in kept:
            await self._drop(k)
        for task in self._ending.take():
            await cancel_and_wait(task)

    @property
    def kept(self) -> list[str]:
        """Node ids of the members kept warm now (recently asked first)."""
        return list(self._kept)

    def warm(self, node_id: str) -> bool:
        k = self._kept.get(node_id)
        return k is not None and k.connection is not None

    def down_for(self, node_id: str) -> float | None:
        """Seconds since this keeper's dials to ``node_id`` began failing, if the member is
        kept, has no connection and its last dial failed (nothing answered since); else
        None. What a fetch consults so a running node does not dial an owner it already
        knows is down (``node.sharing.retrieve``); a redial that succeeds clears it."""
        k = self._kept.get(node_id)
        if k is None or k.connection is not None or k.down_since is None:
            return None
        return max(0.0, self._now() - k.down_since)

    async def dialled(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, for the dials in flight now to end (right after
        ``start``: the first dial to every kept member), however they end."""
        tasks = [k.dialing for k in self._kept.values() if k.dialing is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    # -- choosing ----------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _sample(self, roster: Roster) -> list[Member]:
        if self._ranked[0] != roster.version:
            self._ranked = (roster.version, sample_rank(self.own_id, roster))
        return self._ranked[1]

    def _choose(self) -> None:
        """Recompute the kept set: drop who left it, dial who joined it."""
        roster = self.book.current
        horizon = self._now() - self.settings.idle_timeout_s
        while self._recent and next(iter(self._recent.values())) < horizon:
            self._recent.popitem(last=False)        # oldest first: asked too long ago
        chosen: dict[str, Member] = {}
        for node_id in reversed(self._recent):      # most recently asked first
            member = roster.member(node_id)
            if member is not None and len(chosen) < self.settings.warm_peers:
                chosen[node_id] = member
        for member in self._sample(roster):
            if len(chosen) >= self.settings.warm_peers:
                break
            chosen.setdefault(member.node_id, member)
        for node_id in [n for n in self._kept if n not in chosen]:
            self._spawn_drop(self._kept.pop(node_id))
        before, self._kept = self._kept, {}
        for node_id, member in chosen.items():     # in the chosen order (``kept``)
            k = self._kept[node_id] = before.get(node_id) or _Kept(member)
            if k is not before.get(node_id):
                self._dial_soon(k, 0.0)
            elif k.member.peer_address != member.peer_address:
                k.member = member                   # moved: the old connection is useless
                self._close(k)
                self._dial_soon(k, 0.0)
        self.stats["kept"] = len(self._kept)

    def _on_roster(self, roster: Roster) -> None:
        if self._running:
            self._choose()

    def _on_answer(self, member: Member, path: str, connection: PeerConnection) -> None:
        """The client got an answer from ``member`` over ``connection``."""
        if not self._running or member.node_id == self.own_id:
            return
        if path not in BACKGROUND_PATHS:            # our dials, roster gossip: not asking
            self._asked(member.node_id)
        k = self._kept.get(member.node_id)
        if k is None:
            return
        if k.connection is None:
            self._adopt(k, connection)
        elif k.connection.same(connection):
            k.used_at = self._now()

    def _asked(self, node_id: str) -> None:
        self._recent[node_id] = self._now()
        self._recent.move_to_end(node_id)
        while len(self._recent) > self.settings.warm_peers:
            self._recent.popitem(last=False)
        if node_id not in self._kept or next(iter(self._kept)) != node_id:
            self._choose()

    # -- dialling ----------------------------------------------------------------------
    def _current(self, k: _Kept) -> bool:
        """Is ``k`` still what this running keeper keeps (not dropped or replaced)?"""
        return self._running and self._kept.get(k.member.node_id) is k

    def _adopt(self, k: _Kept, connection: PeerConnection) -> None:
        if k.redial is not None:
            k.redial.cancel()
            k.redial = None
        k.connection, k.opened_at, k.down_since = connection, self._now(), None
        k.used_at = k.opened_at
        if not connection.when_closed(lambda: self._lost(k, connection)):
            self._lost(k, connection)
            return
        self._keep_alive_later(k, self.settings.keepalive_s)

    def _keep_alive_later(self, k: _Kept, delay: float) -> None:
        def due() -> None:
            k.keepalive = None
            if not self._current(k) or k.connection is None:
                return
            left = k.used_at + self.settings.keepalive_s - self._now()
            if left > _CLOCK_SLACK_S:                # used meanwhile: wait from then
                self._keep_alive_later(k, left)
            elif k.dialing is None:
                k.dialing = asyncio.get_running_loop().create_task(self._ping(k))
        k.keepalive = asyncio.get_running_loop().call_later(delay, due)

    async def _ping(self, k: _Kept) -> None:
        """The keep-alive: a ping over the pooled (kept) connection; its answer marks the
        connection used (``_on_answer``). A failure leaves it to the close event."""
        try:
            self.stats["keepalives"] += 1
            await self.client.call(k.member, "GET", PING_PATH,
                                   timeout=self.settings.dial_deadline_s)
        except (PeerError, ValueError) as exc:
            self.stats["keepalive_failures"] += 1
            log.debug("keep-alive to %s failed: %s", k.member.name, exc)
        finally:
            k.dialing = None
        if not self._current(k):
            return
        if k.connection is None:                     # closed meanwhile: dial as usual
            self._dial_soon(k, self._backoff(k.failures))
            return
        left = k.used_at + self.settings.keepalive_s - self._now()
        # the answer came over another pooled connection: do not ping again at once
        self._keep_alive_later(k, left if left > _CLOCK_SLACK_S else self.settings.keepalive_s)

    def _lost(self, k: _Kept, connection: PeerConnection) -> None:
        """A kept connection closed: dial again later, sooner if it had lived long."""
        if k.connection is not connection:
            return
        k.connection = None
        self._stop_keepalive(k)
        if not self._current(k):
            return
        self.stats["dropped"] += 1
        lived = self._now() - k.opened_at
        k.failures = 0 if lived >= self.settings.backoff_max_s else k.failures + 1
        self._dial_soon(k, self._backoff(k.failures))

    def _backoff(self, failures: int) -> float:
        if failures == 0:
            return self.settings.backoff_first_s * self._rng.uniform(0.5, 1.0)
        delay = min(self.settings.backoff_max_s,
                    self.settings.backoff_first_s * 2 ** min(failures - 1, 30))
        return delay * self._rng.uniform(0.5, 1.0)   # seeded jitter: peers do not sync up

    def _dial_soon(self, k: _Kept, delay: float) -> None:
        if k.redial is not None or k.dialing is not None:
            return
        if delay <= 0:
            k.dialing = asyncio.get_running_loop().create_task(self._dial(k))
            return

        def due() -> None:
            k.redial = None
            if self._current(k) and k.connection is None:
                k.dialing = asyncio.get_running_loop().create_task(self._dial(k))
        k.redial = asyncio.get_running_loop().call_later(delay, due)

    async def _dial(self, k: _Kept) -> None:
        try:
            self.stats["dials"] += 1
            await self.client.call(k.member, "GET", PING_PATH,
                                   timeout=self.settings.dial_deadline_s)
            # the answer came over a connection the client reported (_on_answer adopts it)
        except (PeerError, ValueError) as exc:   # ValueError: an unusable address
            self.stats["dial_failures"] += 1
            k.failures += 1
            if k.down_since is None and isinstance(exc, (PeerUnreachable, PeerTimeout)):
                k.down_since = self._now()          # not a refusal: that peer is up
            log.debug("warm connection to %s not opened: %s", k.member.name, exc)
        finally:
            k.dialing = None
        if k.connection is None and self._current(k):
            self._dial_soon(k, self._backoff(max(1, k.failures)))

    # -- closing -----------------------------------------------------------------------
    def _stop_keepalive(self, k: _Kept) -> None:
        if k.keepalive is not None:
            k.keepalive.cancel()
            k.keepalive = None

    def _close(self, k: _Kept) -> None:
        self._stop_keepalive(k)
        connection, k.connection = k.connection, None
        if connection is not None:
            connection.close()

    def _spawn_drop(self, k: _Kept) -> None:
        if k.redial is not None:
            k.redial.cancel()
            k.redial = None
        if k.dialing is not None:
            k.dialing.cancel()     # awaited at stop: no task outlives the keeper
            self._ending.add(k.dialing)
            k.dialing = None
        if self.book.member(k.member.node_id) is None:
            self._close(k)         # revoked or gone: no connection stays open to it
        else:
            self._stop_keepalive(k)
            k.connection = None    # not kept any more: the pool's idle timeout ends it

    async def _drop(self, k: _Kept) -> None:
        if k.redial is not None:
            k.redial.cancel()
            k.redial = None
        task, k.dialing = k.dialing, None
        await cancel_and_wait(task)
        self._close(k)

