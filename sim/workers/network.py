"""One worker's share of the simulated network: local hosts as usual, the rest remote.

Every worker knows every host (its region, whether it is up), so the sender computes a
message's fate and delay with the same per-host random stream as in one process.
A datagram or stream segment for another worker's host is not scheduled here but kept
in ``outbox``, stamped with its arrival time; the coordinator hands it to the owner at
the next barrier, which ``deliver``s it at that time. Peer-API connections between
workers are opened and carried by stream wires (``sim.workers.streams``).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import ssl
from typing import Any

from sim.network import Address, SimNetwork, SimStreamTransport
from sim.netmodel import NetModel
from sim.workers.framing import pack_bytes, unpack_bytes
from sim.workers.streams import (ACK, BADCERT, DATA, FIN, RST, SYN, RemoteEnd, StreamInbox,
                                 cert_from_json)

# [arrival_s, src_host, src_port, dst_host, dst_port, payload_b64] for a datagram;
# stream wires add [kind, stream_id, meta]. The coordinator routes on dst_host.
Wire = list[Any]


class CausalityError(RuntimeError):
    """A message reached a worker after its arrival time: the lookahead was wrong."""


class PartitionedNetwork(SimNetwork):
    def __init__(self, model: NetModel, seed: int, local_hosts: set[str], index: int = 0) -> None:
        super().__init__(model, seed)
        self.local_hosts = local_hosts
        self.index = index
        self.outbox: list[Wire] = []
        self.remote_streams_opened = 0
        self._ids = itertools.count()
        self._ends: dict[str, RemoteEnd] = {}
        self._opening: dict[str, asyncio.Future[str]] = {}
        self._inbox = StreamInbox()

    # -- datagrams -----------------------------------------------------------------------
    def _post(self, delay: float, src: Address, dst: Address, data: bytes) -> None:
        if dst[0] in self.local_hosts:
            super()._post(delay, src, dst, data)
            return
        arrival = asyncio.get_running_loop().time() + delay
        self.outbox.append([arrival, src[0], src[1], dst[0], dst[1], pack_bytes(data)])

    def take_outbox(self) -> list[Wire]:
        out, self.outbox = self.outbox, []
        return out

    def deliver(self, wires: list[Wire]) -> None:
        """Schedule datagrams and stream wires from other workers at their arrival times."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for wire in wires:
            arrival, src_host, src_port, dst_host, dst_port, payload = wire[:6]
            if arrival < now:
                raise CausalityError(f"a message for {dst_host} arrived at {now:.6f} s, "
                                     f"after its arrival time {arrival:.6f} s")
            if len(wire) == 6:
                loop.call_at(arrival, self._deliver_datagram, (src_host, src_port),
                             (dst_host, dst_port), unpack_bytes(payload))
                continue
            kind, stream_id, meta = wire[6:9]
            if kind == SYN:
                loop.call_at(arrival, self._on_syn, stream_id, (src_host, src_port),
                             (dst_host, dst_port), meta)
            elif kind in (ACK, RST, BADCERT):
                loop.call_at(arrival, self._on_answer, stream_id, kind, wire)
            else:
                self._inbox.add(stream_id, kind, unpack_bytes(payload))
                loop.call_at(arrival, self._on_segment, stream_id)

    # -- streams between workers -----------------------------------------------------------
    def send_stream(self, arrival: float, end: SimStreamTransport, kind: str, data: bytes,
                    stream_id: str | None = None, meta: Any = None) -> None:
        sid = stream_id if stream_id is not None else getattr(end, "stream_id")
        self.outbox.append([arrival, end.local[0], end.local[1], end.remote[0], end.remote[1],
                            pack_bytes(data), kind, sid, meta])

    def _answer(self, arrival: float, local: Address, remote: Address, kind: str,
                stream_id: str) -> None:
        self.outbox.append([arrival, local[0], local[1], remote[0], remote[1], "", kind,
                            stream_id, None])

    async def connect(self, src: str, dst: Address, server_name: str | None,
                      peercert: dict[str, Any], protocol: asyncio.Protocol
                      ) -> SimStreamTransport:
        if dst[0] in self.local_hosts or dst[0] not in self.hosts:
            return await super().connect(src, dst, server_name, peercert, protocol)
        loop = asyncio.get_running_loop()
        target = self.hosts[dst[0]]
        if not self._reachable(src, dst[0]) and (target.up or target.silent):
            await loop.create_future()        # SYNs go nowhere: the caller's deadline ends it
        rtt = self.rtt(src, dst[0])           # the same draws as in one process
        if not target.up:
            await asyncio.sleep(rtt)          # SYN, RST
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused by {dst[0]}")
        started = loop.time()
        number = next(self._ids)
        sid = f"{self.index}:{number}"
        local = (src, 40000 + number % 20000)
        end = RemoteEnd(self, sid, local, dst, protocol, {"peername": dst})
        end.opened_by_local = True
        waiter: asyncio.Future[str] = loop.create_future()
        self._opening[sid] = waiter
        ready = started + max(1, self.model.handshake_rtts) * rtt
        self.outbox.append([started + rtt / 2, src, local[1], dst[0], dst[1], "", SYN, sid,
                            {"server_name": server_name, "peercert": peercert,
                             "refused_at": started + rtt, "ready_at": ready}])
        try:
            answer = await waiter
        finally:
            self._opening.pop(sid, None)
        if answer == RST:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused by {dst[0]}")
        if answer == BADCERT:
            raise ssl.SSLCertVerificationError(
                f"certificate of {dst[0]}:{dst[1]} is not for {server_name}")
        if not self._reachable(src, dst[0]):
            raise ConnectionResetError(errno.ECONNRESET, f"connection reset by {dst[0]}")
        self._ends[sid] = end
        self._streams[end] = None
        self.handshakes[src] += 1
        self.remote_streams_opened += 1
        protocol.connection_made(end)
        return end

    def _on_syn(self, sid: str, client: Address, address: Address, meta: dict[str, Any]) -> None:
        listener = self._listeners.get(address) if self.hosts[address[0]].up else None
        if listener is None:
            self._answer(float(meta["refused_at"]), address, client, RST, sid)
            return
        ready = float(meta["ready_at"])
        server_name = meta["server_name"]
        if server_name is not None and server_name != listener.owner_dns:
            self._answer(ready, address, client, BADCERT, sid)
            return
        self._answer(ready, address, client, ACK, sid)
        asyncio.get_running_loop().call_at(ready, self._server_ready, sid, client, address,
                                           cert_from_json(meta["peercert"]))

    def _server_ready(self, sid: str, client: Address, address: Address,
                      peercert: dict[str, Any]) -> None:
        listener = self._listeners.get(address)
        if listener is None or not self._reachable(address[0], client[0]):
            return          # gone during the handshake; the client end is reset or closed
        protocol = listener.factory()
        end = RemoteEnd(self, sid, address, client, protocol,
                        {"peername": client, "peercert": peercert})
        self._ends[sid] = end
        self._streams[end] = None
        protocol.connection_made(end)

    def _on_answer(self, sid: str, kind: str, wire: Wire) -> None:
        waiter = self._opening.get(sid)
        if waiter is not None and not waiter.done():
            waiter.set_result(kind)
        elif kind == ACK:   # the caller gave up during the handshake: close the server end
            src, dst = (wire[3], wire[4]), (wire[1], wire[2])
            self._answer(asyncio.get_running_loop().time() + self._lookahead_delay(src, dst),
                         src, dst, FIN, sid)

    def _lookahead_delay(self, src: Address, dst: Address) -> float:
        delay = self.model.delay(self.hosts[src[0]].region, self.hosts[dst[0]].region, 64,
                                 self._rngs[src[0]], lossless=True)
        assert delay is not None
        return delay

    def _on_segment(self, sid: str) -> None:
        kind, chunk = self._inbox.pop(sid)
        end = self._ends.get(sid)
        if end is None:
            return
        if kind == DATA:
            end.remote_data(chunk)
        elif kind == FIN:
            end.remote_fin()

    def forget(self, stream: SimStreamTransport) -> None:
        super().forget(stream)
        if isinstance(stream, RemoteEnd):
            self._ends.pop(stream.stream_id, None)
