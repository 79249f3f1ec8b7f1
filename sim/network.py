"""The in-memory network under simulated nodes: datagrams and byte streams, modelled.

Each simulated node gets a ``HostTransport`` (the node's ``node.net.transport.Transport``):
its DHT endpoint and peer-API server register here under a virtual address, and
everything they send is delivered by ``loop.call_later`` after the delay the
``LinkModel`` gives — or dropped. There are no sockets and no TLS: a stream connection
costs ``handshake_rtts`` round trips (TCP + TLS 1.3 = 2) and then carries the exact
bytes aiohttp writes; the server side sees the client's certificate identity as a
verified handshake would hand it over. Above this, the node code is the real one.

Faults live here too: a host that is down drops every datagram sent to it and refuses
stream connections after one round trip (its machine is up, the node process is not),
and its open connections are reset; ``partition`` splits hosts into groups that cannot
reach each other; a slow host adds a fixed delay to everything it sends.
Every byte is counted per sender, so scenarios can report traffic (e.g. repair bytes).
"""

from __future__ import annotations

import asyncio
import errno
import random
import ssl
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from node.net.tls_site import OnRefused
from node.net.transport import DatagramFactory
from sim.netmodel import NetModel
from sim.vclock import EPOCH

Address = tuple[str, int]


class NetworkError(RuntimeError):
    """The simulated network was asked for something impossible (address in use …)."""


@dataclass
class Host:
    name: str
    region: int
    up: bool = True                     # the node process runs
    silent: bool = False                # while down: the machine is off (no RST either)
    slow_s: float = 0.0                 # extra delay on everything this host sends
    group: int = 0                      # partition group; hosts in different groups are cut


@dataclass
class _Listener:
    factory: Callable[[], asyncio.Protocol]
    owner_dns: str                      # the node name the server's certificate carries


class SimNetwork:
    def __init__(self, model: NetModel, seed: int) -> None:
        self.model = model
        self.seed = seed
        self.hosts: dict[str, Host] = {}
        self._datagram: dict[Address, "SimDatagramTransport"] = {}
        self._listeners: dict[Address, _Listener] = {}
        # open stream ends in the order opened (a dict, not a set: a set of objects
        # iterates in address order, which differs from run to run)
        self._streams: dict["SimStreamTransport", None] = {}
        self._rngs: dict[str, random.Random] = {}
        self.bytes_sent: Counter[str] = Counter()      # host -> bytes (datagrams + streams)
        self.stream_bytes: Counter[str] = Counter()
        self.datagrams_lost = 0
        self.handshakes: Counter[str] = Counter()      # host -> stream connections it opened
        self.tap: Callable[[Address, Address, bytes], None] | None = None   # sees every datagram

    # -- hosts ---------------------------------------------------------------------------
    def add_host(self, name: str, region: int) -> Host:
        host = self.hosts.setdefault(name, Host(name, region))
        self._rngs.setdefault(name, random.Random(f"{self.seed}:{name}"))
        return host

    def set_up(self, name: str, up: bool, *, silent: bool = False) -> None:
        self.hosts[name].up = up
        self.hosts[name].silent = silent and not up
        if not up:
            for stream in [s for s in self._streams if name in (s.local[0], s.remote[0])]:
                stream.reset()

    def partition(self, groups: list[list[str]]) -> None:
        """Hosts in different groups cannot reach each other until ``heal``."""
        for g, names in enumerate(groups):
            for name in names:
                self.hosts[name].group = g + 1

    def heal(self) -> None:
        for host in self.hosts.values():
            host.group = 0

    def _reachable(self, src: str, dst: str) -> bool:
        a, b = self.hosts.get(src), self.hosts.get(dst)
        if a is None or b is None or not (a.up and b.up):
            return False
        return a.group == b.group or a.group == 0 and b.group == 0

    def one_way(self, src: str, dst: str, size: int) -> float | None:
        """Seconds for ``size`` bytes from ``src`` to ``dst``, or None if lost."""
        a, b = self.hosts[src], self.hosts[dst]
        delay = self.model.delay(a.region, b.region, size, self._rngs[src])
        return None if delay is None else delay + a.slow_s

    def rtt(self, src: str, dst: str) -> float:
        there = self.model.delay(self.hosts[src].region, self.hosts[dst].region, 64,
                                 self._rngs[src], lossless=True)
        back = self.model.delay(self.hosts[dst].region, self.hosts[src].region, 64,
                                self._rngs[src], lossless=True)
        assert there is not None and back is not None
        return there + back + self.hosts[src].slow_s + self.hosts[dst].slow_s

    # -- datagrams -----------------------------------------------------------------------
    def bind_datagram(self, address: Address, transport: "SimDatagramTransport") -> None:
        if address in self._datagram:
            raise OSError(errno.EADDRINUSE, "address already in use")
        self._datagram[address] = transport

    def unbind_datagram(self, address: Address, transport: "SimDatagramTransport") -> None:
        if self._datagram.get(address) is transport:
            del self._datagram[address]

    def send_datagram(self, src: Address, dst: Address, data: bytes) -> None:
        self.bytes_sent[src[0]] += len(data)
        if self.tap is not None:
            self.tap(src, dst, data)
        if dst[0] not in self.hosts or not self._reachable(src[0], dst[0]):
            self.datagrams_lost += 1
            return
        delay = self.one_way(src[0], dst[0], len(data))
        if delay is None:
            self.datagrams_lost += 1
            return
        self._post(delay, src, dst, data)

    def _post(self, delay: float, src: Address, dst: Address, data: bytes) -> None:
        """A datagram on its way: delivered ``delay`` seconds from now (sim.workers
        sends those for another process's hosts to it instead)."""
        asyncio.get_running_loop().call_later(delay, self._deliver_datagram, src, dst, data)

    def _deliver_datagram(self, src: Address, dst: Address, data: bytes) -> None:
        target = self._datagram.get(dst)
        if target is not None and self.hosts[dst[0]].up:
            target.protocol.datagram_received(data, src)

    # -- streams -------------------------------------------------------------------------
    def listen(self, address: Address, factory: Callable[[], asyncio.Protocol],
               owner_dns: str) -> None:
        if address in self._listeners:
            raise OSError(errno.EADDRINUSE, "address already in use")
        self._listeners[address] = _Listener(factory, owner_dns)

    def unlisten(self, address: Address) -> None:
        self._listeners.pop(address, None)

    async def connect(self, src: str, dst: Address, server_name: str | None,
                      peercert: dict[str, Any], protocol: asyncio.Protocol
                      ) -> "SimStreamTransport":
        """Open a connection as TCP + TLS would: ``handshake_rtts`` round trips, then
        both sides get ``connection_made``. Raises ConnectionRefusedError / hangs (until
        the caller's deadline) like a real network."""
        loop = asyncio.get_running_loop()
        target = self.hosts.get(dst[0])
        if target is None or not self._reachable(src, dst[0]) and (target.up or target.silent):
            await loop.create_future()        # SYNs go nowhere: the caller's deadline ends it
        rtt = self.rtt(src, dst[0])
        listener = self._listeners.get(dst) if target.up else None
        if listener is None:
            await asyncio.sleep(rtt)          # SYN, RST
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused by {dst[0]}")
        await asyncio.sleep(rtt * self.model.handshake_rtts)
        listener = self._listeners.get(dst)
        if listener is None or not self._reachable(src, dst[0]):
            raise ConnectionResetError(errno.ECONNRESET, f"connection reset by {dst[0]}")
        if server_name is not None and server_name != listener.owner_dns:
            raise ssl.SSLCertVerificationError(
                f"certificate of {dst[0]}:{dst[1]} is not for {server_name}")
        local = (src, 40000 + len(self._streams) % 20000)
        client = SimStreamTransport(self, local, dst, protocol, {"peername": dst})
        client.opened_by_local = True
        server_protocol = listener.factory()
        server = SimStreamTransport(self, dst, local, server_protocol,
                                    {"peername": local, "peercert": peercert})
        client.other, server.other = server, client
        self._streams[client] = self._streams[server] = None
        self.handshakes[src] += 1
        server_protocol.connection_made(server)
        protocol.connection_made(client)
        return client

    def connections(self, host: str) -> int:
        """Stream connections ``host`` opened that are still open."""
        return sum(1 for s in self._streams
                   if s.opened_by_local and s.local[0] == host and not s.is_closing())

    def forget(self, stream: "SimStreamTransport") -> None:
        self._streams.pop(stream, None)


class SimDatagramTransport(asyncio.DatagramTransport):
    def __init__(self, network: SimNetwork, address: Address,
                 protocol: asyncio.DatagramProtocol) -> None:
        super().__init__()
        self.network, self.address, self.protocol = network, address, protocol
        self._closing = False

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        if not self._closing:
            self.network.send_datagram(self.address, (addr[0], int(addr[1])), bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.address if name == "sockname" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.network.unbind_datagram(self.address, self)
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class SimStreamTransport(asyncio.Transport):
    """One end of an in-memory connection; bytes arrive in order after the link delay."""

    def __init__(self, network: SimNetwork, local: Address, remote: Address,
                 protocol: asyncio.Protocol, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self.network, self.local, self.remote = network, local, remote
        self._protocol = protocol
        self.other: SimStreamTransport | None = None
        self.opened_by_local = False        # the client end of its connection
        self._closing = self._lost = False
        self._arrival = 0.0        # when the last byte sent this way arrives (ordering)
        self._paused = False
        self._held: list[bytes] = []
        self._in_flight: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()

    # asyncio.Transport API used by aiohttp
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.local
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        held, self._held = self._held, []
        for chunk in held:
            self._protocol.data_received(chunk)

    def is_reading(self) -> bool:
        return not self._paused

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def can_write_eof(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        chunk = bytes(data)
        self.network.bytes_sent[self.local[0]] += len(chunk)
        self.network.stream_bytes[self.local[0]] += len(chunk)
        self._schedule(len(chunk), self._deliver_to_other, chunk)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _schedule(self, size: int, fn: Callable[..., None], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        delay = self.network.one_way(self.local[0], self.remote[0], size)
        if delay is None:   # TCP retransmits a lost segment: one retransmission timeout later
            delay = self.network.model.retransmit_s + (
                self.network.one_way(self.local[0], self.remote[0], size) or 0.0)
        self._arrival = max(self._arrival, loop.time() + delay)
        # Timers due at the same moment may run in any order (asyncio's heap is not
        # stable), and later sends often share the arrival time of an earlier one: each
        # timer delivers the OLDEST pending send, so bytes and the FIN keep their order.
        self._in_flight.append((fn, args))
        loop.call_at(self._arrival, self._deliver_next)

    def _deliver_next(self) -> None:
        fn, args = self._in_flight.popleft()
        fn(*args)

    def _deliver_to_other(self, chunk: bytes) -> None:
        other = self.other
        if other is not None and not other._lost:
            other._receive(chunk)

    def _receive(self, chunk: bytes) -> None:
        if self._paused:
            self._held.append(chunk)
        else:
            self._protocol.data_received(chunk)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._schedule(0, self._other_lost, None)       # FIN after the data in flight
        asyncio.get_running_loop().call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self.close()

    def reset(self) -> None:
        """The host went down: both ends lose the connection now."""
        for end in (self, self.other):
            if end is not None and not end._lost:
                end._closing = True
                asyncio.get_running_loop().call_soon(
                    end._connection_lost, ConnectionResetError("connection reset"))

    def _other_lost(self, exc: Exception | None) -> None:
        if self.other is not None:
            self.other._closing = True
            self.other._connection_lost(exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.network.forget(self)
        try:
            self._protocol.connection_lost(exc)
        except Exception:  # a protocol's teardown must not stop the network
            pass


class SimSite(web.BaseSite):
    """The peer API's aiohttp server listening on a virtual address."""

    __slots__ = ("_network", "_address", "_owner_dns")

    def __init__(self, runner: web.BaseRunner, network: SimNetwork, address: Address,
                 owner_dns: str) -> None:
        super().__init__(runner)
        self._network, self._address, self._owner_dns = network, address, owner_dns

    @property
    def name(self) -> str:
        return f"sim://{self._address[0]}:{self._address[1]}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._network.listen(self._address, server, self._owner_dns)

    async def stop(self) -> None:
        self._network.unlisten(self._address)
        await super().stop()


class SimConnector(aiohttp.BaseConnector):
    """aiohttp client connections through the simulated network."""

    def __init__(self, network: SimNetwork, host: str, peercert: dict[str, Any],
                 limit_per_host: int, idle_timeout_s: float = 15.0) -> None:
        super().__init__(limit_per_host=limit_per_host, keepalive_timeout=idle_timeout_s)
        self._network, self._host, self._peercert = network, host, peercert

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> ResponseHandler:
        protocol = self._factory()
        dst = (str(req.url.host), int(req.url.port or 443))
        try:
            await self._network.connect(self._host, dst, req.server_hostname, self._peercert,
                                        protocol)
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(req.connection_key, exc) from exc
        return protocol


@dataclass
class HostTransport:
    """One simulated node's ``Transport``: its host on the network and its certificate."""

    network: SimNetwork
    host: str
    peercert: dict[str, Any] = field(default_factory=dict)
    dns_name: str = ""

    def wall_clock(self) -> float:
        return EPOCH + asyncio.get_running_loop().time()

    async def open_datagram(self, factory: DatagramFactory, host: str,
                            port: int) -> asyncio.DatagramProtocol:
        protocol = factory()
        transport = SimDatagramTransport(self.network, (self.host, port), protocol)
        self.network.bind_datagram((self.host, port), transport)
        protocol.connection_made(transport)
        return protocol

    async def serve_peer(self, runner: web.AppRunner, host: str, port: int, *,
                         tls: ssl.SSLContext, on_refused: OnRefused, handshake_timeout: float,
                         sock: object | None, first_flight: object | None = None
                         ) -> tuple[web.BaseSite, int]:
        site = SimSite(runner, self.network, (self.host, port), self.dns_name)
        await site.start()
        return site, port

    def peer_connector(self, tls: ssl.SSLContext, limit_per_host: int, idle_timeout_s: float,
                       first_flight: object | None = None) -> aiohttp.BaseConnector:
        # the simulated network models no handshakes: first-flight keys change nothing here
        return SimConnector(self.network, self.host, self.peercert, limit_per_host,
                            idle_timeout_s)
