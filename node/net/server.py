"""The peer API server: mutual TLS, signed requests, a route registry for the other parts.

Other parts (query, keyshare, replica, dht) register handlers with ``add_route`` before
``start``. A handler receives a ``PeerRequest`` only after the request passed every check
in ``RequestGuard``; it returns a JSON object (sent as 200) or a prepared
``web.StreamResponse`` (bundles; query answers written as they are read), or raises
``RequestRefused`` to say no (e.g. a policy denial) — that refusal is audited here like
all others. Handlers audit the accesses they serve; this layer audits refusals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from node.identity import NodeIdentity
from node.net.auditsink import AuditSink, record
from node.net.firstflight.channel import PEER_NODE_ID
from node.net.firstflight.noise_ik import StaticKey
from node.net.firstflight.server import ServerKeys
from node.net.guard import GuardSettings, RequestGuard
from node.net.idle import PEER_IDLE_TIMEOUT_S, server_keepalive_timeout
from node.net.jsonbody import parse_json_object
from node.net.nonces import NonceCache
from node.net.pki import PKIError, node_id_from_peercert
from node.net.reqsign import RequestRefused
from node.net.roster import MAX_ROSTER_BYTES, Member, RosterError
from node.net.refusal_summary import RefusalSummary
from node.net.rosterbook import RosterBook
from node.net.transport import SOCKETS, Transport
from node.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ROSTER_PATH = "/v1/roster"
PING_PATH = "/v1/ping"     # answers who we are: opens (and proves) a warm connection
_PATH = re.compile(r"^/[A-Za-z0-9/_.{}\-]*$")


@dataclass(frozen=True)
class PeerServerSettings:
    body_limit: int = 1 << 20           # bytes; larger bodies get 413
    request_lifetime_s: int = 60
    clock_skew_s: int = 30
    nonce_capacity: int = 100_000
    nonce_journal: Path | None = None   # the replay cache survives restarts when set
    handshake_timeout_s: float = 10.0
    handshake_audit_window_s: float = 60.0   # refused handshakes: one summary per window
    shutdown_timeout_s: float = 5.0
    # an idle connection is closed after this; longer than the clients' idle timeout
    # (federation.peer_idle_timeout_s) so that the client, which knows, closes first
    keepalive_timeout_s: float = server_keepalive_timeout(PEER_IDLE_TIMEOUT_S)


@dataclass(frozen=True)
class PeerRequest:
    """A request that passed membership, signature, window and replay checks."""

    sender: Member
    method: str
    path: str
    json: dict[str, Any]
    body: bytes
    http: web.Request


Reply = Mapping[str, Any] | web.StreamResponse
PeerHandler = Callable[[PeerRequest], Awaitable[Reply]]


@dataclass(frozen=True)
class _Route:
    handler: PeerHandler
    body_limit: int
    parse_json: bool


GUARD_KEY = web.AppKey("medfed_guard", RequestGuard)
NONCES_KEY = web.AppKey("medfed_nonces", NonceCache)
SENDER_KEY = web.RequestKey("medfed_sender", Member)
BODY_KEY = web.RequestKey("medfed_body", bytes)


def refusal_response(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status)


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestRefused(413, "body_too_large", f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise RequestRefused(413, "body_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class PeerServer:
    def __init__(self, identity: NodeIdentity, roster: RosterBook, tls: ssl.SSLContext, *,
                 audit: AuditSink, settings: PeerServerSettings = PeerServerSettings(),
                 clock: Callable[[], float] | None = None,
                 transport: Transport = SOCKETS) -> None:
        if tls.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("peer server TLS context must require client certificates")
        self.identity = identity
        self.roster = roster
        self.settings = settings
        self._tls = tls
        self._audit = audit
        self._transport = transport
        self._clock = clock or transport.wall_clock
        self._routes: dict[tuple[str, str], _Route] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._site: web.BaseSite | None = None
        self._handshakes = RefusalSummary(
            lambda actor, outcome, **detail: record(self._audit, "peer.tls", actor, outcome,
                                                    "handshake", **detail),
            settings.handshake_audit_window_s)
        self.add_route("GET", PING_PATH, self._ping)
        self.add_route("GET", ROSTER_PATH, self._get_roster)
        self.add_route("POST", ROSTER_PATH, self._post_roster, body_limit=MAX_ROSTER_BYTES,
                       parse_json=False)

    # -- registry ----------------------------------------------------------
    def add_route(self, method: str, path: str, handler: PeerHandler, *,
                  body_limit: int | None = None, parse_json: bool = True) -> None:
        """Register before ``start``; ``parse_json=False`` hands the raw body over."""
        if self._runner is not None:
            raise RuntimeError("routes must be added before the peer server starts")
        if not _PATH.match(path) or (method.upper(), path) in self._routes:
            raise ValueError(f"invalid or duplicate peer route {method} {path}")
        self._routes[(method.upper(), path)] = _Route(
            handler, body_limit or self.settings.body_limit, parse_json)

    # -- built-in routes: ping, roster gossip -------------------------------
    async def _ping(self, call: PeerRequest) -> Reply:
        return {"node": self.identity.node_id_hex, "roster_version": self.roster.current.version}

    async def _get_roster(self, call: PeerRequest) -> Reply:
        return self.roster.signed.to_dict()

    async def _post_roster(self, call: PeerRequest) -> Reply:
        if _is_version_digest(call.body):
            # anti-entropy digest (node.net.gossip): only say which version we hold
            return {"adopted": False, "version": self.roster.current.version}
        try:
            adopted = self.roster.offer(call.body)
        except RosterError as exc:
            raise RequestRefused(400, "bad_roster", str(exc)) from exc
        return {"adopted": adopted, "version": self.roster.current.version}

    # -- lifecycle ---------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("peer server is not running")
        return self._port

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    sock: socket.socket | None = None) -> int:
        """Listen on host:port, or on an already bound ``sock``; returns the bound port."""
        if self._runner is not None:
            raise RuntimeError("peer server already started")
        runner = web.AppRunner(self._build_app(), access_log=None, handler_cancellation=True,
                               shutdown_timeout=self.settings.shutdown_timeout_s,
                               keepalive_timeout=self.settings.keepalive_timeout_s)
        await runner.setup()
        try:
            site, bound = await self._transport.serve_peer(
                runner, host, port, tls=self._tls, on_refused=self._handshake_refused,
                handshake_timeout=self.settings.handshake_timeout_s, sock=sock,
                first_flight=ServerKeys(StaticKey(bytes(self.identity.box_key)),
                                        self._member_with_box_key))
        except OSError:
            await runner.cleanup()
            raise
        self._runner, self._port, self._site = runner, bound, site
        return bound

    def connections(self) -> dict[str, int]:
        """Connections accepted since start, by handshake (TLS or first-flight)."""
        accepted = getattr(self._site, "accepted", None)    # the simulator's site has none
        return dict(accepted) if isinstance(accepted, dict) else {}

    async def stop(self) -> None:
        runner, self._runner, self._port = self._runner, None, None
        if runner is not None:
            await runner.cleanup()
        self._handshakes.flush()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard_middleware])
        app.cleanup_ctx.append(self._nonce_context)
        for (method, path), route in self._routes.items():
            app.router.add_route(method, path, self._dispatcher(route))
        return app

    async def _nonce_context(self, app: web.Application) -> AsyncIterator[None]:
        """Owns the replay cache and its periodic purge for the lifetime of the app."""
        nonces = NonceCache(self.settings.nonce_capacity, journal=self.settings.nonce_journal,
                            now=self._clock())
        app[NONCES_KEY] = nonces
        app[GUARD_KEY] = RequestGuard(
            self.identity.node_id_hex, self.roster, nonces,
            GuardSettings(self.settings.request_lifetime_s, self.settings.clock_skew_s),
            not_before=self._clock())

        async def purge() -> None:
            while True:
                await asyncio.sleep(self.settings.request_lifetime_s)
                nonces.purge(self._clock())

        task = asyncio.get_running_loop().create_task(purge())
        yield
        await cancel_and_wait(task)
        nonces.clear()

    # -- request path ------------------------------------------------------
    def _refuse(self, request: web.Request, actor: str, exc: RequestRefused) -> web.Response:
        record(self._audit, "peer.request", actor, "refused",
               f"{request.method} {request.path[:80]}", code=exc.code, status=exc.status,
               reason=exc.reason)
        return refusal_response(exc.status, exc.code, exc.reason)

    def _handshake_refused(self, where: str, reason: str) -> None:
        self._handshakes.note(where, reason)

    def _member_with_box_key(self, box_key: bytes) -> str | None:
        """Who proved ``box_key`` in a first-flight handshake: an active member, or None."""
        for member in self.roster.current.active():
            if member.box_key == box_key:
                return member.node_id
        return None

    def _peer_node_id(self, request: web.Request) -> str:
        transport = request.transport
        proven = transport.get_extra_info(PEER_NODE_ID) if transport is not None else None
        if isinstance(proven, str):
            return proven        # set only by node.net.firstflight after the Noise handshake
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        try:
            return node_id_from_peercert(peercert)
        except PKIError as exc:
            raise RequestRefused(403, "no_node_id", str(exc)) from exc

    @web.middleware
    async def _guard_middleware(self, request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                ) -> web.StreamResponse:
        actor = request.remote or "unknown"
        try:
            peer = self._peer_node_id(request)
            actor = peer
            guard = request.app[GUARD_KEY]
            route = self._routes.get((request.method, _route_path(request)))
            limit = route.body_limit if route else self.settings.body_limit
            body: bytes | None = None
            status = self.roster.status(peer)
            if status == "unknown" and _is_roster_offer(request):
                body = await _read_bounded(request, limit)
                # a version digest from a node we do not list: refused below as a
                # non-member, and its gossip then offers the whole roster
                adopted = None if _is_version_digest(body) else self._adopt_offered_roster(peer, body)
                if adopted is not None and self.roster.status(peer) == "unknown":
                    # the operator (a CA-signed certificate, never a member) hands over a
                    # roster: only the CA signature on the roster counts, so answer now
                    return web.json_response({"adopted": adopted,
                                              "version": self.roster.current.version})
            if status == "revoked" and _is_roster_read(request):
                # a revoked node may learn that it is revoked (and nothing else)
                record(self._audit, "peer.request", peer, "ok", "GET /v1/roster",
                       code="revoked_reads_roster")
                return web.json_response(self.roster.signed.to_dict())
            member, signed = guard.before_body(peer, request.headers, now=self._clock())
            if body is None:
                body = await _read_bounded(request, limit)
            guard.after_body(member, signed, request.method, request.raw_path, body,
                             now=self._clock())
            request[SENDER_KEY] = member
            request[BODY_KEY] = body
            return await handler(request)
        except RequestRefused as exc:
            return self._refuse(request, actor, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return refusal_response(exc.status, re.sub(r"\W+", "_", exc.reason.lower()),
                                    exc.reason)

    def _adopt_offered_roster(self, peer: str, body: bytes) -> bool | None:
        """A newly admitted node brings the roster that lists it, or the operator hands a
        new one over: adopt it if CA-signed and newer (None: not CA-signed, refused)."""
        try:
            adopted = self.roster.offer(body)
        except RosterError as exc:
            log.warning("refused a roster offered by unknown node %s: %s", peer[:16], exc)
            return None  # the caller stays unknown and is refused as a non-member
        if adopted:
            record(self._audit, "roster.offer", peer, "ok", version=self.roster.current.version)
        return adopted

    def _dispatcher(self, route: _Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            body = request[BODY_KEY]
            payload = parse_json_object(body) if route.parse_json else {}
            call = PeerRequest(request[SENDER_KEY], request.method, request.raw_path, payload,
                               body, request)
            try:
                reply = await route.handler(call)
                if isinstance(reply, web.StreamResponse):
                    return reply
                return web.json_response(dict(reply))
            except RequestRefused:
                raise
            except Exception as exc:  # a handler bug must not take the node down or leak data
                log.error("peer handler %s %s failed with %s", request.method, request.path,
                          type(exc).__name__)
                record(self._audit, "peer.request", call.sender.node_id, "error",
                       f"{request.method} {request.path[:80]}", code="internal_error",
                       error=type(exc).__name__)
                return refusal_response(500, "internal_error",
                                        "the serving node failed to handle the request")
        return dispatch


def _route_path(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else request.path


def _is_version_digest(body: bytes) -> bool:
    """``{"version": N}``: anti-entropy's offer of a version, not of a roster."""
    if len(body) > 64:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and set(doc) == {"version"}


def _is_roster_offer(request: web.Request) -> bool:
    return request.method == "POST" and request.path == ROSTER_PATH


def _is_roster_read(request: web.Request) -> bool:
    return request.method == "GET" and request.path == ROSTER_PATH
