"""An aiohttp site that does the TLS handshake itself so refused handshakes can be audited.

With ``ssl=`` on ``create_server`` asyncio drops failed handshakes silently, so a
non-member knocking with a foreign certificate would leave no trace. Here the listener
accepts plain TCP, upgrades with ``loop.start_tls`` (public API) under a deadline, and
reports each failure; only connections that completed the mTLS handshake reach aiohttp.
With ``first_flight`` keys the same port also serves first-flight connections
(``node.net.firstflight``): the first byte, peeked, tells which handshake a client began.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import weakref
from collections.abc import Callable

from aiohttp import web

from node.net.firstflight import server as ff_server
from node.net.firstflight.frames import MAGIC
from node.net.firstflight.peek import first_byte
from node.net.idle import tcp_keepalive

OnRefused = Callable[[str, str], None]   # (peer address, reason)


class _Holding(asyncio.Protocol):
    """Keeps bytes that arrive between handshake completion and handing over to aiohttp."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True


class _Acceptor(asyncio.Protocol):
    def __init__(self, site: "AuditedTLSSite") -> None:
        self._site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # nothing may be read before TLS takes over
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                tcp_keepalive(sock)    # both ends probe an idle connection (node.net.idle)
            except OSError:
                pass                   # not a TCP socket (a test's socketpair): nothing to keep
        self._site._spawn(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: client certificate rejected ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionAbortedError)):
        return "TLS handshake did not complete in time"
    return f"TLS handshake failed: peer closed the connection ({exc.__class__.__name__})"


class AuditedTLSSite(web.BaseSite):
    __slots__ = ("_host", "_port", "_bound_port", "_on_refused", "_handshake_timeout",
                 "_pending", "_sock", "_first_flight", "accepted", "_handshaking")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 ssl_context: ssl.SSLContext, on_refused: OnRefused,
                 handshake_timeout: float = 10.0, sock: socket.socket | None = None,
                 first_flight: ff_server.ServerKeys | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._first_flight = first_flight
        self.accepted = {"tls": 0, "first_flight": 0}    # handshakes completed, by kind
        self._handshaking: weakref.WeakSet[ff_server.FirstFlightServer] = weakref.WeakSet()
        self._sock = sock
        self._host = host
        self._port = port
        self._bound_port: int | None = None
        self._on_refused = on_refused
        self._handshake_timeout = handshake_timeout
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(lambda: _Acceptor(self), sock=self._sock)
        else:
            self._server = await loop.create_server(lambda: _Acceptor(self), self._host,
                                                    self._port)
        self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for link in list(self._handshaking):
            link.drop()
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await super().stop()

    def _spawn(self, transport: asyncio.Transport) -> None:
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _count_first_flight(self) -> None:
        self.accepted["first_flight"] += 1

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"
        if self._first_flight is not None:
            begun = await first_byte(transport, self._handshake_timeout)
            if begun is None:
                transport.abort()
                self._on_refused(where, "TLS handshake did not complete in time")
                return
            if begun == b"":
                # closed before sending a byte: no handshake was tried, none refused (a
                # first-flight client's unused preconnect, ``node.sharing.hedge``)
                transport.close()
                return
            if begun == MAGIC[:1]:
                server = self._runner.server
                assert server is not None
                self._handshaking.add(ff_server.accept(
                    transport, self._first_flight, server, where=where,
                    on_refused=self._on_refused, handshake_timeout=self._handshake_timeout,
                    on_accepted=self._count_first_flight))
                return
        holding = _Holding()
        assert self._ssl_context is not None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, holding, self._ssl_context, server_side=True,
                ssl_handshake_timeout=self._handshake_timeout)
        except asyncio.CancelledError:
            transport.abort()
            raise
        except Exception as exc:  # any failed handshake is a refusal to record, never a crash
            transport.abort()
            self._on_refused(where, _describe(exc))
            return
        if tls is None or tls.is_closing():
            return
        self.accepted["tls"] += 1
        server = self._runner.server
        assert server is not None
        handler = server()
        handler.connection_made(tls)
        tls.set_protocol(handler)
        for chunk in holding.chunks:
            handler.data_received(chunk)
        if holding.eof:
            handler.eof_received()
