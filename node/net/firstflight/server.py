"""The server end: read message 1, prove this node's key, hand the request to aiohttp.

``AuditedTLSSite`` hands over a connection whose first byte is ``MAGIC``'s. The caller
must be an active member (its static key is the one the roster lists for it); every
refusal — a bad magic, a message 1 that does not verify, a key no member holds, no
message 1 within the handshake deadline — is reported like a refused TLS handshake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from node.net.firstflight.channel import PEER_NODE_ID, SealedLink, SealedTransport
from node.net.firstflight.frames import FrameError, frame
from node.net.firstflight.noise_ik import StaticKey, remote_static, responder

OnRefused = Callable[[str, str], None]   # (peer address, reason)


@dataclass(frozen=True)
class ServerKeys:
    static: StaticKey
    member_of: Callable[[bytes], str | None]   # a box public key -> an active member's node id


class FirstFlightServer(SealedLink):
    def __init__(self, keys: ServerKeys, make_handler: Callable[[], asyncio.Protocol], *,
                 where: str, on_refused: OnRefused, handshake_timeout: float,
                 on_accepted: Callable[[], None] = lambda: None) -> None:
        super().__init__(expect_magic=True)
        self._on_accepted = on_accepted
        self._keys = keys
        self._noise = responder(keys.static)
        self._make_handler = make_handler
        self._where = where
        self._on_refused = on_refused
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._reported = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._timeout, self.fail, FrameError("first-flight handshake did not complete in time"))

    def on_message(self, message: bytes) -> None:
        if self.sealed is not None:
            super().on_message(message)
            return
        if self._timer is not None:
            self._timer.cancel()
        try:
            payload = self._noise.read_message(message)
        except Exception:      # noise's errors, cryptography's InvalidTag / low-order keys
            raise FrameError("first-flight handshake failed: message 1 does not verify") from None
        node_id = self._keys.member_of(remote_static(self._noise))
        if node_id is None:
            raise FrameError("first-flight handshake refused: the caller's key is not an active member's")
        assert self.raw is not None
        self.raw.write(frame(self._noise.write_message(b"")))
        self._on_accepted()
        sealed = SealedTransport(self.raw, {PEER_NODE_ID: node_id})
        sealed.noise = self._noise
        self.sealed = sealed
        app = self._make_handler()
        self.app = app
        sealed.set_protocol(app)
        app.connection_made(sealed)
        if payload:
            app.data_received(payload)

    def fail(self, exc: Exception) -> None:
        self._report(str(exc))
        super().fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.sealed is None:
            self._report("first-flight handshake failed: peer closed the connection")
        super().connection_lost(exc)

    def drop(self) -> None:
        """The server stops: end a connection still in its handshake, without a refusal."""
        if self.sealed is None and self.raw is not None:
            self._reported = True
            if self._timer is not None:
                self._timer.cancel()
            self.raw.abort()

    def _report(self, reason: str) -> None:
        if not self._reported:
            self._reported = True
            self._on_refused(self._where, reason)


def accept(transport: asyncio.Transport, keys: ServerKeys,
           make_handler: Callable[[], asyncio.Protocol], *, where: str,
           on_refused: OnRefused, handshake_timeout: float,
           on_accepted: Callable[[], None] = lambda: None) -> FirstFlightServer:
    """Serve a connection whose first byte was ``MAGIC``'s (reading paused until now);
    ``on_accepted`` hears of each caller that proved a member's key. Once the handshake is
    done, aiohttp's server owns the connection (and closes it when it stops); until then
    the caller may ``drop`` it."""
    link = FirstFlightServer(keys, make_handler, where=where, on_refused=on_refused,
                             handshake_timeout=handshake_timeout, on_accepted=on_accepted)
    transport.set_protocol(link)
    link.connection_made(transport)
    transport.resume_reading()
    return link
