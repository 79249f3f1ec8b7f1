"""Calling other members: signed requests over mutual TLS, each with a deadline.

One ``PeerClient`` per node holds one connection pool. The server is pinned to the member
being called (hostname check against the node's certificate DNS name), so a request
carrying a user assertion never reaches another node by mistake.
"""

from __future__ import annotations

import asyncio
import json as _json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from yarl import URL

from node.identity import NodeIdentity
from node.net.firstflight.client import ClientKeys
from node.net.firstflight.noise_ik import StaticKey
from node.net.idle import PEER_IDLE_TIMEOUT_S
from node.net.errors import PeerProtocolError, PeerRefused, PeerTimeout, PeerUnreachable
from node.net.pki import node_dns_name
from node.net.reqsign import sign_request
from node.net.roster import Member, split_address
from node.net.rosterbook import RosterBook
from node.net.transport import SOCKETS, Transport

MAX_RESPONSE_BYTES = 32 << 20
STREAM_CHUNK = 1 << 18          # what ``stream`` hands on at most per chunk, and aiohttp's read buffer

LinkHook = Callable[[Member], Awaitable[None]]
DialHook = Callable[[], None]     # a request is opening a new connection (no pooled one)
# (called node id, method, path, request body) -> sink for the response body's chunks
Observer = Callable[[str, str, str, bytes], Callable[[bytes], None]]


class PeerConnection:
    """The pooled connection an answer came over (for ``node.net.keeper``)."""

    def __init__(self, protocol: ResponseHandler) -> None:
        self._protocol = protocol

    def when_closed(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once the connection has ended; False if it already has."""
        closed = self._protocol.closed      # made on first use: only for kept connections
        if closed is None:
            return False

        def done(future: "asyncio.Future[None]") -> None:
            if not future.cancelled():
                future.exception()          # a reset is an expected end, not an error
            callback()
        closed.add_done_callback(done)
        return True

    def same(self, other: "PeerConnection") -> bool:
        """Is ``other`` the same pooled connection?"""
        return self._protocol is other._protocol

    def close(self) -> None:
        self._protocol.close()


# (the member that answered, the path asked, the connection it answered over): node.net.keeper
AnswerListener = Callable[[Member, str, PeerConnection], None]


class _PeerResponse(aiohttp.ClientResponse):
    """Remembers the connection it arrived on: a short answer is read whole and its
    connection handed back to the pool before the caller sees it (then
    ``ClientResponse.connection`` is None)."""

    protocol_used: ResponseHandler | None = None

    async def start(self, connection: Connection) -> "aiohttp.ClientResponse":
        self.protocol_used = connection.protocol
        return await super().start(connection)


def _tls_failure(exc: BaseException) -> str | None:
    """Why TLS failed, if it did (aiohttp wraps ssl errors in several ways)."""
    seen: BaseException | None = exc
    while seen is not None:
        detail = getattr(seen, "certificate_error", None) or seen
        if isinstance(detail, ssl.SSLError):
            return str(getattr(detail, "verify_message", None) or getattr(detail, "reason", None)
                       or detail.__class__.__name__)
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "os_error", None)
    return None


def _dial_trace() -> aiohttp.TraceConfig:
    """Calls a request's ``on_dial`` hook (its ``trace_request_ctx``) when the connector
    starts opening a new connection for it, i.e. no pooled connection was free."""
    async def create_start(_session: aiohttp.ClientSession, ctx: Any, _params: Any) -> None:
        hook = getattr(ctx, "trace_request_ctx", None)
        if callable(hook):
            hook()

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(create_start)
    return trace


class PeerClient:
    def __init__(self, identity: NodeIdentity, tls: ssl.SSLContext, *,
                 request_lifetime_s: int = 60, connect_timeout_s: float = 5.0,
                 clock: Callable[[], float] | None = None, limit_per_host: int = 8,
                 roster: RosterBook | None = None, link: LinkHook | None = None,
                 observers: list[Observer] | None = None,
                 transport: Transport = SOCKETS, idle_timeout_s: float = PEER_IDLE_TIMEOUT_S,
                 first_flight: bool = False) -> None:
        """With ``roster``, calls to nodes that are not active members fail without sending.

        ``link`` (simulator only) is awaited before each request to model the network:
        it may sleep (latency) or raise PeerUnreachable (loss); its time counts against
        the call's deadline. ``observers`` (tests, simulator: ``node.testing.traffic``)
        see every request body and every response chunk, in plain text above TLS.
        Connections stay open for re-use until idle for ``idle_timeout_s``; ``answered``
        listeners (``node.net.keeper``) hear which connection each answer came over.
        ``first_flight`` (``set_first_flight``): new connections to members carry their
        first request in the handshake (``node.net.firstflight``), two round trips to the
        first answer byte instead of TLS's three; for a process that fetches and exits.
        A running node keeps TLS: its keeper holds connections open, idle, for minutes."""
        if not tls.check_hostname:
            raise ValueError("peer client TLS context must check the server's node name")
        self.identity = identity
        self._tls = tls
        self._lifetime = request_lifetime_s
        self._connect_timeout = connect_timeout_s
        self._transport = transport
        self._clock = clock or transport.wall_clock
        self._limit_per_host = limit_per_host
        self._roster = roster
        self.link = link
        self.observers = observers if observers is not None else []
        self.answered: list[AnswerListener] = []
        self._idle_timeout = idle_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._connect_failed: dict[str, float] = {}    # node id -> when a connect last failed
        self._dials: dict[str, "asyncio.Task[bool]"] = {}   # node id -> preconnect under way
        self._first_flight = first_flight

    async def __aenter__(self) -> "PeerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every pooled connection and forget which nodes failed to connect."""
        self._connect_failed.clear()
        dials, self._dials = list(self._dials.values()), {}
        for dial in dials:
            dial.cancel()
        if dials:
            await asyncio.gather(*dials, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def first_flight(self) -> bool:
        return self._first_flight

    async def set_first_flight(self, on: bool) -> None:
        """Switch how new connections open; closes the pool (``close``) if it changes."""
        if on != self._first_flight:
            await self.close()
            self._first_flight = on

    def _first_flight_keys(self) -> ClientKeys | None:
        if not self._first_flight or self._roster is None:
            return None
        roster = self._roster

        def server_key(hostname: str) -> bytes | None:
            labels = hostname.split(".")
            member = roster.member("".join(labels[:2])) if len(labels) > 2 else None
            if member is None or node_dns_name(member.node_id) != hostname:
                return None
            return member.box_key

        return ClientKeys(StaticKey(bytes(self.identity.box_key)), server_key)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = self._transport.peer_connector(self._tls, self._limit_per_host,
                                                       self._idle_timeout,
                                                       first_flight=self._first_flight_keys())
            # read_bufsize: aiohttp pauses the socket once twice this much is buffered; at
            # its 64 KiB default a 1 Gbit/s stream pauses and resumes every ~128 KiB and
            # ``stream`` never gets its full chunks
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  read_bufsize=STREAM_CHUNK,
                                                  response_class=_PeerResponse,
                                                  trace_configs=[_dial_trace()])
        return self._session

    # -- public calls ------------------------------------------------------
    async def call(self, member: Member, method: str, path: str,
                   json: Mapping[str, Any] | None = None, *, timeout: float,
                   max_response_bytes: int = MAX_RESPONSE_BYTES,
                   allow_revoked: bool = False) -> dict[str, Any]:
        """One request/response; returns the peer's JSON object. ``allow_revoked``: the
        roster gossip may tell a revoked member that it is revoked."""
        data = await self.call_bytes(member, method, path, json, timeout=timeout,
                                     max_response_bytes=max_response_bytes,
                                     allow_revoked=allow_revoked)
        try:
            doc = _json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PeerProtocolError(member.node_id, "answer is not JSON") from exc
        if not isinstance(doc, dict):
            raise PeerProtocolError(member.node_id, "answer is not a JSON object")
        return doc

    async def call_bytes(self, member: Member, method: str, path: str,
                         json: Mapping[str, Any] | None = None, *, timeout: float,
                         max_response_bytes: int = MAX_RESPONSE_BYTES,
                         allow_revoked: bool = False) -> bytes:
        """One request/response; returns the whole response body as it arrived (for a
        caller that checks it before parsing, e.g. a streamed query answer)."""
        async with self._open(member, method, path, json, timeout,
                              allow_revoked=allow_revoked) as (resp, sinks):
            data = await self._read_capped(member, resp, max_response_bytes)
            for sink in sinks:
                sink(data)
        return data

    async def stream(self, member: Member, method: str, path: str,
                     json: Mapping[str, Any] | None = None, *, timeout: float,
                     chunk_size: int = STREAM_CHUNK,
                     on_dial: DialHook | None = None) -> AsyncIterator[bytes]:
        """Yield the response body in chunks (up to ``chunk_size``: what has arrived);
        ``timeout`` bounds the whole transfer. 256 KiB: a bundle at 1 Gbit/s is 4x fewer
        hand-offs to the decode pipeline than with 64 KiB. ``on_dial`` is called if the
        request has no pooled connection and opens one (TCP + TLS: 2 round trips more).

        Wrap in ``contextlib.aclosing`` when you may stop early, so the connection is
        released at once rather than when the generator is collected.
        """
        async with self._open(member, method, path, json, timeout,
                              on_dial=on_dial) as (resp, sinks):
            async for chunk in resp.content.iter_chunked(chunk_size):
                for sink in sinks:
                    sink(chunk)
                yield chunk

    def preconnect(self, member: Member, *, timeout: float) -> "asyncio.Task[bool]":
        """Open a connection to ``member`` (TCP + TLS, no request) and leave it idle in the
        pool; the task says whether it did. A request to ``member`` made meanwhile waits
        for it (within its own deadline) instead of opening a second connection, so a
        caller that will probably need ``member`` soon pays the 2 round trips early.
        Nothing is sent above TLS: the peer learns only that this member connected. A
        pooled connection is reused, not doubled; a failed connect is remembered as any
        failed connect is (``connect_failed_within``)."""
        dial = self._dials.get(member.node_id)
        if dial is None:
            dial = asyncio.ensure_future(self._preconnect(member, timeout))
            self._dials[member.node_id] = dial

            def done(task: "asyncio.Task[bool]", node: str = member.node_id) -> None:
                if self._dials.get(node) is task:
                    del self._dials[node]
            dial.add_done_callback(done)
        return dial

    async def _preconnect(self, member: Member, timeout: float) -> bool:
        node = member.node_id
        if self._roster is not None and self._roster.member(node) is None:
            return False
        try:
            url = self._url(member, "/")
        except ValueError:
            return False
        session = self._get_session()
        connector = session.connector
        assert connector is not None
        # the same connection key as ``session.request(..., server_hostname=...)`` makes
        request = aiohttp.ClientRequest("GET", url, loop=asyncio.get_running_loop(), ssl=True,
                                        server_hostname=node_dns_name(node), session=session)
        limits = aiohttp.ClientTimeout(total=timeout, connect=min(self._connect_timeout, timeout))
        try:
            async with asyncio.timeout(timeout):
                connection = await connector.connect(request, [], limits)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError) and _tls_failure(exc) is None:
                self._connect_failed[node] = self._clock()
            return False
        connection.release()
        return True

    async def _wait_dial(self, node: str, timeout: float) -> float:
        """Wait for a preconnect to ``node`` under way; returns what is left of ``timeout``."""
        dial = self._dials.get(node)
        if dial is None or dial.done():
            return timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait([dial], timeout=timeout)
        left = timeout - (loop.time() - started)
        if left <= 0:
            raise PeerTimeout(node, f"no complete answer within {timeout:.1f}s")
        return left

    def connect_failed_within(self, node_id: str, seconds: float) -> float | None:
        """How long ago the last connection attempt to ``node_id`` failed, if it did within
        ``seconds`` and nothing was answered by that node since; otherwise None."""
        failed = self._connect_failed.get(node_id)
        if failed is None:
            return None
        ago = self._clock() - failed
        return ago if 0 <= ago <= seconds else None

    # -- plumbing ----------------------------------------------------------
    def _url(self, member: Member, path: str) -> URL:
        if not path.startswith("/") or not path.isascii() or any(c.isspace() for c in path):
            raise ValueError(f"peer path must be an absolute ASCII path, got {path!r}")
        split_address(member.peer_address)
        return URL(f"https://{member.peer_address}{path}", encoded=True)

    @asynccontextmanager
    async def _open(self, member: Member, method: str, path: str,
                    json: Mapping[str, Any] | None, timeout: float, *,
                    allow_revoked: bool = False, on_dial: DialHook | None = None
                    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, list[Callable[[bytes], None]]]]:
        url = self._url(member, path)
        if (self._roster is not None and self._roster.member(member.node_id) is None
                and not (allow_revoked and self._roster.status(member.node_id) == "revoked")):
            raise PeerRefused(member.node_id, 0, self._roster.status(member.node_id),
                              "not calling a node that is not an active member of the roster")
        body = b"" if json is None else _json.dumps(json, separators=(",", ":")).encode()
        signed = sign_request(self.identity, member.node_id, method, url.raw_path_qs, body,
                              now=self._clock(), lifetime_s=self._lifetime)
        headers = signed.to_headers()
        if body:
            headers["Content-Type"] = "application/json"
        node = member.node_id
        sinks = [observe(node, method.upper(), url.raw_path, body) for observe in self.observers]
        if self.link is not None:
            timeout = await self._through_link(member, timeout)
        if self._dials:
            timeout = await self._wait_dial(node, timeout)
        limits = aiohttp.ClientTimeout(total=timeout, connect=min(self._connect_timeout, timeout))
        try:
            async with self._get_session().request(
                    method.upper(), url, data=body or None, headers=headers, timeout=limits,
                    server_hostname=node_dns_name(node), allow_redirects=False,
                    trace_request_ctx=on_dial) as resp:
                self._connect_failed.pop(node, None)
                if resp.status >= 400:
                    raise await self._refusal(member, resp)
                if self.answered:
                    self._tell_answered(member, url.raw_path, resp)
                yield resp, sinks
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise PeerTimeout(node, f"no complete answer within {timeout:.1f}s") from exc
        except aiohttp.ClientError as exc:
            tls_failure = _tls_failure(exc)
            if tls_failure is not None:
                raise PeerRefused(node, 0, "tls_refused", f"TLS failed: {tls_failure}") from exc
            if isinstance(exc, aiohttp.ClientConnectorError):
                self._connect_failed[node] = self._clock()
                raise PeerUnreachable(node, f"cannot connect to {member.peer_address} "
                                            f"({exc.__class__.__name__})") from exc
            raise PeerUnreachable(node, f"connection to {member.peer_address} dropped "
                                        f"({exc.__class__.__name__}); if this repeats, the peer "
                                        "may be refusing this node's certificate") from exc

    def _tell_answered(self, member: Member, path: str, resp: aiohttp.ClientResponse) -> None:
        protocol = resp.protocol_used if isinstance(resp, _PeerResponse) else None
        if protocol is None:
            return
        connection = PeerConnection(protocol)
        for listener in list(self.answered):
            listener(member, path, connection)

    async def _through_link(self, member: Member, timeout: float) -> float:
        """Wait out the simulated link; returns what is left of the deadline."""
        assert self.link is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.wait_for(self.link(member), timeout)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise PeerTimeout(member.node_id, f"no complete answer within {timeout:.1f}s") from exc
        left = timeout - (loop.time() - started)
        if left <= 0:
            raise PeerTimeout(member.node_id, f"no complete answer within {timeout:.1f}s")
        return left

    async def _read_capped(self, member: Member, resp: aiohttp.ClientResponse,
                           limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise PeerProtocolError(member.node_id, f"answer larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def _refusal(self, member: Member, resp: aiohttp.ClientResponse) -> PeerRefused:
        code, reason = "http_error", resp.reason or "error"
        try:
            doc = _json.loads(await resp.content.read(64 << 10))
            if isinstance(doc, dict):
                code = str(doc.get("error", code))[:64]
                reason = str(doc.get("reason", reason))[:300]
        except (ValueError, UnicodeDecodeError, aiohttp.ClientError):
            pass
        return PeerRefused(member.node_id, resp.status, code, reason)
