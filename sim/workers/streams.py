"""Peer-API streams between workers: one end of a connection in each process.

A connection whose two hosts run in different workers is two ``RemoteEnd``s, one per
process, named by the same stream id. Everything one end sends — the bytes aiohttp
writes, the FIN of ``close`` — leaves as a stream wire in its worker's outbox, stamped
with the arrival time the sender's link draw gives (the same per-host random stream
and the same per-direction ordering as ``sim.network.SimStreamTransport`` in one
process), and the coordinator hands it to the other end's worker at the next barrier.
Every one-way delay is at least the lookahead, so no wire arrives in a worker's past.

Opening one (client in worker A, server in worker B), as ``SimNetwork.connect`` does
in one process, with the same round-trip draw:

* A sends ``syn`` (arrives half a round trip later: each leg is >= the lookahead);
* B looks for a listener on the address: none (or the host is down) → ``rst``, which
  reaches A one round trip after it started (SYN, RST); a certificate for another name
  → ``badcert`` at the end of the handshake; otherwise B makes its server end and
  answers ``ack``, which reaches A ``handshake_rtts`` round trips after it started (at
  least one across workers); both ends see ``connection_made`` at that moment.

A host taken down resets its connections in every worker (a kill step reaches all
workers at the same barrier), so each worker resets its own ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sim.network import Address, SimStreamTransport

if TYPE_CHECKING:
    from sim.workers.network import PartitionedNetwork

SYN, ACK, RST, BADCERT, DATA, FIN = "syn", "ack", "rst", "badcert", "data", "fin"


def cert_from_json(doc: Any) -> Any:
    """``getpeercert()``'s shape back from JSON (lists became tuples' stand-ins)."""
    if isinstance(doc, dict):
        return {k: cert_from_json(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return tuple(cert_from_json(v) for v in doc)
    return doc


class RemoteEnd(SimStreamTransport):
    """This worker's end of a connection whose other end runs in another worker."""

    def __init__(self, network: "PartitionedNetwork", stream_id: str, local: Address,
                 remote: Address, protocol: asyncio.Protocol, extra: dict[str, Any]) -> None:
        super().__init__(network, local, remote, protocol, extra)
        self.stream_id = stream_id
        self.partitioned = network

    def _schedule(self, size: int, fn: Callable[..., None], *args: Any) -> None:
        """Not a local timer: a wire to the other end's worker (same draws, same order)."""
        loop = asyncio.get_running_loop()
        net = self.partitioned
        delay = net.one_way(self.local[0], self.remote[0], size)
        if delay is None:   # TCP retransmits a lost segment: one retransmission timeout later
            delay = net.model.retransmit_s + (net.one_way(self.local[0], self.remote[0], size)
                                              or 0.0)
        self._arrival = max(self._arrival, loop.time() + delay)
        if fn == self._deliver_to_other:
            net.send_stream(self._arrival, self, DATA, args[0])
        else:
            net.send_stream(self._arrival, self, FIN, b"")

    def remote_data(self, chunk: bytes) -> None:
        if not self._lost:
            self._receive(chunk)

    def remote_fin(self) -> None:
        if not self._lost:
            self._closing = True
            self._connection_lost(None)


class StreamInbox:
    """Stream wires waiting for their arrival time, per stream, in the order sent (timers
    due at the same moment run in any order: each delivers its stream's oldest wire)."""

    def __init__(self) -> None:
        self._pending: dict[str, deque[tuple[str, Any]]] = {}

    def add(self, stream_id: str, kind: str, item: Any) -> None:
        self._pending.setdefault(stream_id, deque()).append((kind, item))

    def pop(self, stream_id: str) -> tuple[str, Any]:
        queue = self._pending[stream_id]
        item = queue.popleft()
        if not queue:
            del self._pending[stream_id]
        return item
