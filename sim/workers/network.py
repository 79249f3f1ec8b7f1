"""One worker's share of the simulated network: local hosts as usual, the rest remote.

Every worker knows every host (its region, whether it is up), so the sender computes a
datagram's fate and delay with the same per-host random stream as in one process.
A datagram to another worker's host is not scheduled here but kept in ``outbox``,
stamped with its arrival time; the coordinator hands it to the owner at the next
barrier, which ``deliver``s it at that time. A peer-API connection to another
worker's host is refused after one round trip (not supported yet).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from sim.network import Address, SimNetwork, SimStreamTransport
from sim.netmodel import NetModel
from sim.workers.framing import pack_bytes, unpack_bytes

Wire = list[Any]   # [arrival_s, src_host, src_port, dst_host, dst_port, payload_b64]


class CausalityError(RuntimeError):
    """A message reached a worker after its arrival time: the lookahead was wrong."""


class PartitionedNetwork(SimNetwork):
    def __init__(self, model: NetModel, seed: int, local_hosts: set[str]) -> None:
        super().__init__(model, seed)
        self.local_hosts = local_hosts
        self.outbox: list[Wire] = []
        self.remote_streams_refused = 0

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
        """Schedule datagrams from other workers at their arrival times."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for arrival, src_host, src_port, dst_host, dst_port, payload in wires:
            if arrival < now:
                raise CausalityError(f"a datagram for {dst_host} arrived at {now:.6f} s, "
                                     f"after its arrival time {arrival:.6f} s")
            loop.call_at(arrival, self._deliver_datagram, (src_host, src_port),
                         (dst_host, dst_port), unpack_bytes(payload))

    async def connect(self, src: str, dst: Address, server_name: str | None,
                      peercert: dict[str, Any], protocol: asyncio.Protocol
                      ) -> SimStreamTransport:
        if dst[0] in self.local_hosts or dst[0] not in self.hosts:
            return await super().connect(src, dst, server_name, peercert, protocol)
        self.remote_streams_refused += 1
        await asyncio.sleep(self.rtt(src, dst[0]))
        raise ConnectionRefusedError(errno.ECONNREFUSED,
                                     f"{dst[0]} runs in another simulator worker: peer-API "
                                     "connections between workers are not supported yet")
