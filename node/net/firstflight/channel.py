"""The transport aiohttp reads and writes on a first-flight connection.

Like asyncio's TLS transport over a plain one: ``SealedTransport`` is what the HTTP
protocol (aiohttp's client ``ResponseHandler`` or server ``RequestHandler``) sees; its
writes leave as Noise transport messages on the raw TCP transport, and ``SealedLink``
(the raw transport's protocol) decrypts what arrives and hands plaintext up. Until the
handshake's keys exist, writes wait in ``pending`` (the client's first request goes out
inside Noise message 1 instead: ``client``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from noise.connection import NoiseConnection

from node.net.firstflight.frames import FrameError, FrameReader, frame
from node.net.firstflight.noise_ik import seal

PEER_NODE_ID = "medfed_peer_node_id"     # extra info: the member proven by the handshake


class SealedTransport(asyncio.Transport):
    def __init__(self, raw: asyncio.Transport, extra: dict[str, Any] | None = None) -> None:
        super().__init__(extra)
        self._raw = raw
        self._protocol: asyncio.BaseProtocol | None = None
        self.noise: NoiseConnection | None = None      # set once transport keys exist
        self.pending = bytearray()
        self._closing = False

    # -- the HTTP protocol's side ---------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        if name in ("peercert", "sslcontext", "ssl_object", "cipher", "compression"):
            return default      # never the raw socket's: there is no TLS on this connection
        return self._raw.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self.noise is None or self.pending:
            self.pending += data
            self.wants_keys()
            return
        self._send(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def flush_pending(self) -> None:
        """The keys exist now: send what waited for them."""
        if self.pending and self.noise is not None:
            data, self.pending = bytes(self.pending), bytearray()
            self._send(data)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        assert self.noise is not None
        self._raw.write(b"".join(frame(m) for m in seal(self.noise, data)))

    def wants_keys(self) -> None:
        """A write arrived before the keys (the client overrides: message 1 goes out)."""

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a first-flight connection is closed whole, not half")

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size() + len(self.pending)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()


class SealedLink(asyncio.Protocol):
    """The raw TCP transport's protocol: frames in, plaintext up to the HTTP protocol."""

    def __init__(self, *, expect_magic: bool) -> None:
        self.reader = FrameReader(expect_magic=expect_magic)
        self.raw: asyncio.Transport | None = None
        self.sealed: SealedTransport | None = None
        self.app: asyncio.Protocol | None = None
        self.error: Exception | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport

    def data_received(self, data: bytes) -> None:
        try:
            for message in self.reader.feed(data):
                self.on_message(message)
        except Exception as exc:   # FrameError, a failed AEAD tag, a bad key: end the connection
            self.fail(exc if isinstance(exc, FrameError) else
                      FrameError(f"first-flight connection broken: {type(exc).__name__}"))

    def on_message(self, message: bytes) -> None:
        """One Noise message; after the handshake, a transport message."""
        assert self.sealed is not None and self.sealed.noise is not None and self.app is not None
        self.app.data_received(self.sealed.noise.decrypt(message))

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.raw is not None:
            self.raw.abort()

    def eof_received(self) -> bool | None:
        if self.app is not None:
            return self.app.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self.sealed is not None:
            self.sealed._closing = True
        if self.app is not None:
            self.app.connection_lost(self.error or exc)
