"""The client end: an aiohttp connector whose new connections carry the request in message 1.

``FirstFlightConnector`` is aiohttp's ``TCPConnector`` with one change: a new connection to
a member whose box key the roster lists is a Noise ``IK`` connection instead of TLS. The
first request written on it leaves inside message 1, one event-loop turn after the write
(aiohttp writes headers and body in the same turn); later requests on the same pooled
connection are transport messages. A connection opened but not yet used (``preconnect``)
sends nothing: its TCP handshake is done and the request still goes in message 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_exceptions import ClientConnectorError

from node.net.firstflight.channel import SealedLink, SealedTransport
from node.net.firstflight.frames import MAGIC, FrameError, frame
from node.net.firstflight.noise_ik import MAX_FIRST_PAYLOAD, StaticKey, initiator


@dataclass(frozen=True)
class ClientKeys:
    static: StaticKey
    server_key: Callable[[str], bytes | None]   # server hostname (node DNS name) -> box key


class _FirstWrite(SealedTransport):
    """Sends message 1 with what was written in the turn of the first write."""

    def __init__(self, raw: asyncio.Transport, link: "FirstFlightClient") -> None:
        super().__init__(raw)
        self._link = link
        self._scheduled = False
        self._sent = False

    def wants_keys(self) -> None:
        if not self._sent and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_first)

    def _send_first(self) -> None:
        self._scheduled = False
        if self._sent or self.is_closing():
            return
        self._sent = True
        payload = bytes(self.pending[:MAX_FIRST_PAYLOAD])
        del self.pending[:MAX_FIRST_PAYLOAD]
        self._raw.write(MAGIC + frame(self._link.noise.write_message(payload)))


class FirstFlightBroken(aiohttp.ClientConnectionError):
    """The server's answer did not verify (altered, cut, or not from the roster's key)."""


class FirstFlightClient(SealedLink):
    def __init__(self, make_app: Callable[[], Any], keys: ClientKeys, server_public: bytes) -> None:
        super().__init__(expect_magic=False)
        self.noise = initiator(keys.static, server_public)
        self._make_app = make_app

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.raw is not None
        self.sealed = _FirstWrite(self.raw, self)
        self.app = self._make_app()
        self.sealed.set_protocol(self.app)
        self.app.connection_made(self.sealed)

    def on_message(self, message: bytes) -> None:
        assert self.sealed is not None
        if self.sealed.noise is None:
            try:
                self.noise.read_message(message)      # fails unless the server holds its key
            except Exception:
                raise FrameError("the server did not prove the roster's key for it") from None
            if not self.noise.handshake_finished:
                raise FrameError("the first-flight handshake did not finish")
            self.sealed.noise = self.noise
            self.sealed.flush_pending()
            return
        super().on_message(message)

    def fail(self, exc: Exception) -> None:
        super().fail(FirstFlightBroken(str(exc)))   # a ClientError: PeerClient's to report


class FirstFlightConnector(aiohttp.TCPConnector):
    def __init__(self, keys: ClientKeys, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys = keys

    async def _wrap_create_connection(self, protocol_factory: Any, *args: Any,
                                      addr_infos: Any, req: Any, timeout: Any,
                                      client_error: type[Exception] = ClientConnectorError,
                                      **kwargs: Any) -> tuple[asyncio.Transport, Any]:
        hostname = kwargs.get("server_hostname")
        server_public = self._keys.server_key(hostname) if hostname else None
        if server_public is None:       # not a member the roster lists: TLS as usual
            return await super()._wrap_create_connection(
                protocol_factory, *args, addr_infos=addr_infos, req=req, timeout=timeout,
                client_error=client_error, **kwargs)
        kwargs.pop("ssl", None)
        kwargs.pop("server_hostname", None)
        keys = self._keys
        _raw, link = await super()._wrap_create_connection(
            lambda: FirstFlightClient(protocol_factory, keys, server_public), *args,
            addr_infos=addr_infos, req=req, timeout=timeout, client_error=client_error, **kwargs)
        assert isinstance(link, FirstFlightClient) and link.sealed is not None
        return link.sealed, link.app
