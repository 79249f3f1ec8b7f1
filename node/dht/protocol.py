"""UDP transport of the DHT: authenticated datagrams, request/response matching, deadlines.

Why UDP with a signature per datagram rather than the mTLS peer API: a lookup touches
~8–20 different nodes once each, so on the peer API almost every RPC would pay a fresh
mutual-TLS handshake. Measured on this 2-core machine (loopback, Python): a new mTLS
connection (TLS 1.3, ECDSA P-256, both sides) + one message takes ~2.8 ms median; an
Ed25519 signature costs ~22 µs to make and ~59 µs to check, and a whole signed DHT ping
round trip takes ~0.3 ms median (tests/test_dht_network.py prints it). The DHT needs
authenticity and membership, not confidentiality: keys are HMACs and records hold no PHI.
A datagram to a known node carries a MAC under the pair's key instead of a signature
(``node.dht.pairkeys``: the same authenticity for its recipient at ~1.5 µs, the key
agreement paid once per peer); only a bootstrap PING to an unknown id is signed.

Every incoming datagram passes, in order: size bound, strict parse, id == hash(key),
membership, addressed to this node, MAC or signature, freshness (±``max_skew``), replay cache — any failure drops it
silently and bumps ``stats["dropped_<reason>"]``. Requests are answered by an injected
async handler; replies are matched to the pending request by msg_id AND expected
sender. The sender hook is told whether the datagram proves the sender's address (a
reply from the very address the request went to) or only claims it (a request, whose
source address anyone who captured it can fake). Each outgoing datagram goes through an optional ``LinkModel`` (delay / drop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from dataclasses import dataclass

from node.dht.codec import DecodeError
from node.dht.ids import Address
from node.dht.link import LinkModel
from node.dht.membership import Membership
from node.dht.messages import REPLY_KIND, Kind
from node.dht.pairkeys import PairKeyError, PairKeys
from node.dht.replay import ReplayCache
from node.dht.wire import ANYONE, MSG_ID_BYTES, Datagram, WireError, open_datagram, seal
from node.identity import NodeIdentity, node_id_for
from node.tasks import TaskSet

log = logging.getLogger(__name__)

Reply = tuple[Kind, bytes]
Handler = Callable[[Datagram, Address], Awaitable[Reply | None]]
SenderHook = Callable[[Datagram, Address, bool], None]   # (datagram, source, proven)
_REPLIES = frozenset(REPLY_KIND.values())


@dataclass
class _Pending:
    kind: Kind
    expect_id: bytes | None
    future: asyncio.Future[Datagram | None]
    address: Address


class DHTProtocol(asyncio.DatagramProtocol):
    def __init__(self, identity: NodeIdentity, membership: Membership, stats: Counter[str],
                 handler: Handler, on_sender: SenderHook, link: LinkModel | None = None,
                 max_skew: float = 30.0, max_inflight: int = 256,
                 clock: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.membership = membership
        self.stats = stats
        self.link = link
        self.max_skew_ms = int(max_skew * 1000)
        self.max_inflight = max_inflight
        self._handler = handler
        self._on_sender = on_sender
        self._clock = clock
        self._replay = ReplayCache(self.max_skew_ms)
        self._keys = PairKeys(identity)
        self._pending: dict[bytes, _Pending] = {}
        self._tasks = TaskSet()   # request handlers, in arrival order
        self._timers: set[asyncio.TimerHandle] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.local_address: Address = ("0.0.0.0", 0)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("sockname")[:2]
        self.local_address = (host, port)

    def error_received(self, exc: Exception) -> None:
        self.stats["socket_errors"] += 1

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.stats["datagrams_in"] += 1
        address: Address = (addr[0], addr[1])
        try:
            dgram = open_datagram(data, self.membership, self.identity.node_id, self._keys)
        except WireError as exc:
            self.stats[f"dropped_{exc.reason}"] += 1
            return
        now = self.now_ms()
        if abs(now - dgram.sent_ms) > self.max_skew_ms:
            self.stats["dropped_stale"] += 1
            return
        fingerprint = dgram.sender_id + bytes([dgram.kind]) + dgram.msg_id
        if not self._replay.first_seen(fingerprint, now):
            self.stats["dropped_replayed"] += 1
            return
        if dgram.kind in _REPLIES:
            self._accept_reply(dgram, address)
        elif dgram.kind in REPLY_KIND:
            self._accept_request(dgram, address)
        else:
            self.stats["dropped_malformed"] += 1

    def _accept_reply(self, dgram: Datagram, address: Address) -> None:
        pending = self._pending.get(dgram.msg_id)
        if (pending is None or pending.future.done() or pending.kind != dgram.kind
                or (pending.expect_id is not None and pending.expect_id != dgram.sender_id)):
            self.stats["dropped_unsolicited"] += 1
            return
        self._on_sender(dgram, address, address == pending.address)
        pending.future.set_result(dgram)

    def _accept_request(self, dgram: Datagram, address: Address) -> None:
        if len(self._tasks) >= self.max_inflight:
            self.stats["dropped_overload"] += 1
            return
        self._on_sender(dgram, address, False)
        task = asyncio.get_running_loop().create_task(self._serve(dgram, address))
        self._tasks.add(task)

    async def _serve(self, dgram: Datagram, address: Address) -> None:
        try:
            reply = await self._handler(dgram, address)
        except DecodeError:
            self.stats["dropped_malformed"] += 1
            return
        except Exception:  # a bad request must never take the node down
            self.stats["handler_errors"] += 1
            log.exception("DHT request handler failed (kind %s)", dgram.kind)
            return
        if reply is not None:
            self._send(reply[0], dgram.msg_id, reply[1], address, dgram.sender_key)

    # -- sending -------------------------------------------------------------------
    async def request(self, address: Address, kind: Kind, body: bytes,
                      expect_key: bytes | None, timeout: float) -> Datagram | None:
        """Send one request to the member with verify key ``expect_key`` (None: whoever
        is at ``address``, a signed PING to anyone) and wait for its authenticated reply
        from that member; None after ``timeout``."""
        if self.transport is None or self.transport.is_closing():
            return None
        msg_id = os.urandom(MSG_ID_BYTES)
        expect_id = None if expect_key is None else node_id_for(expect_key)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Datagram | None] = loop.create_future()
        self._pending[msg_id] = _Pending(REPLY_KIND[kind], expect_id, future, address)
        self.stats["rpcs_sent"] += 1
        # the deadline ends the wait by answering None (asyncio.wait_for would add a
        # waiter future and a callback hop to each of the million RPCs of a large run)
        deadline = loop.call_later(timeout, self._expire, future)
        try:
            self._send(kind, msg_id, body, address, expect_key)
            return await future
        except ConnectionAbortedError:  # the node is stopping
            return None
        finally:
            deadline.cancel()
            self._pending.pop(msg_id, None)

    def _expire(self, future: "asyncio.Future[Datagram | None]") -> None:
        if not future.done():
            self.stats["rpc_timeouts"] += 1
            future.set_result(None)

    def _send(self, kind: Kind, msg_id: bytes, body: bytes, address: Address,
              recipient_key: bytes | None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if recipient_key is None:
            data = seal(self.identity, kind, msg_id, self.now_ms(), body, ANYONE)
        else:
            try:
                key = self._keys.key_for(recipient_key)
            except PairKeyError:
                self.stats["dropped_unkeyable"] += 1
                return
            data = seal(self.identity, kind, msg_id, self.now_ms(), body,
                        node_id_for(recipient_key), key)
        delay = 0.0 if self.link is None else self.link.plan(self.local_address, address,
                                                             len(data))
        if delay is None:
            self.stats["dropped_link"] += 1
            return
        self.stats["datagrams_out"] += 1
        if delay <= 0:
            self.transport.sendto(data, address)
            return
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self._timers.discard(handle)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(data, address)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ConnectionAbortedError("DHT node stopped"))
        if self.transport is not None:
            self.transport.close()

    async def drain(self) -> None:
        """Wait for cancelled request handlers to finish unwinding."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
