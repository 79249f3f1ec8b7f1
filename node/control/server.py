"""The control service: an aiohttp app on the node's Unix socket (see ``node.control``).

Routes (JSON; every call is audited as ``control.<route>``). Only the node's own OS user
may connect (the socket's peer credentials); ``status`` is an administrator's command and
needs nothing more. ``fetch`` and ``query`` are made for a local user: they carry the
user's name, a token from the node's ``TokenStore`` and a purpose; role and department
come from the user record (unknown, disabled or expired: 401/403, audited).

- ``GET  /v1/status``  node id, name, ports, store counts, members, pending jobs.
- ``POST /v1/login``   ``{"user", "password", "ttl_s"}``: the node checks the password and
  answers ``{"token"}``; a refusal is audited as ``user.refused`` (401). The CLI logs in
  here while the node runs, because the running node holds the audit log.
- ``POST /v1/fetch``   fetch a series into a folder on this machine; answers NDJSON:
  ``{"bytes", "instances"}`` progress lines, then ``{"result": …}`` or ``{"error": …}``.
- ``POST /v1/query``   one federated query; answers the merged ``FederatedAnswer``.
- ``POST /v1/<name>``  routes a node service offers with ``control_routes()``
  (``{name: handler}``; e.g. similarity search): NDJSON event lines, then
  ``{"result": …}`` or ``{"error": …}``.

A malformed request is answered 4xx with ``{"error": code, "reason": …}``; the node
keeps running. A client that hangs up mid-fetch cancels the fetch, which leaves nothing
behind (the sinks stage and commit only a verified bundle).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from node.control import control_socket_path
from node.control.federation_status import node_federation_status
from node.control.fetch_job import EXPECTED_ERRORS, start_fetch
from node.control.unixsock import BoundSocket, bind_private, peer_uid, remove_if_ours
from node.control.wire import (MAX_BODY_BYTES, Actor, BadRequest, FetchRequest, parse_actor,
                               parse_body, parse_fetch, parse_login, parse_query)

if TYPE_CHECKING:
    from node.node import Node
    from node.users import User

log = logging.getLogger("medfed.control")
PROGRESS_EVERY_S = 0.1
ACTOR_KEY = web.RequestKey("actor", Actor)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ROUTE = re.compile(r"^/v1/([a-z]{1,16})$")
ROUTES = ("status", "login", "fetch", "query")


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _route_name(path: str, extra: tuple[str, ...] = ()) -> str:
    match = _ROUTE.match(path)
    return match.group(1) if match and match.group(1) in ROUTES + extra else "unknown"


# A service's control route: (node, body, user record, purpose, emit event line) -> result.
ServiceRoute = Callable[["Node", dict[str, Any], "User", str, Callable[[dict[str, Any]], None]],
                        Awaitable[dict[str, Any]]]


class ControlService:
    """NodeService "control": local clients reach the running node through it."""

    name = "control"

    def __init__(self, *, body_limit: int = MAX_BODY_BYTES) -> None:
        self.body_limit = body_limit
        self._node: "Node | None" = None
        self._runner: web.AppRunner | None = None
        self._bound: BoundSocket | None = None
        self._fetches: set[asyncio.Task[Any]] = set()
        self._extra: tuple[str, ...] = ()

    @property
    def socket_path(self) -> Path | None:
        return self._bound.path if self._bound is not None else None

    # -- lifecycle -------------------------------------------------------------
    async def start(self, node: "Node") -> None:
        bound = bind_private(control_socket_path(node.cfg.data_dir))
        app = web.Application(middlewares=[self._guard], client_max_size=self.body_limit)
        app.router.add_get("/v1/status", self._status)
        app.router.add_post("/v1/login", self._login)
        app.router.add_post("/v1/fetch", self._fetch)
        app.router.add_post("/v1/query", self._query)
        for svc in node.services:
            offered = getattr(svc, "control_routes", None)
            for name, route in (offered() if offered is not None else {}).items():
                app.router.add_post(f"/v1/{name}", self._service_route(name, route))
                self._extra += (name,)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.SockSite(runner, bound.sock).start()
        except BaseException:
            await runner.cleanup()
            remove_if_ours(bound)
            bound.sock.close()
            raise
        self._node, self._runner, self._bound = node, runner, bound
        log.info("control API listening on %s", bound.path)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        bound, self._bound = self._bound, None
        if bound is not None:
            remove_if_ours(bound)   # first: new clients fall back instead of waiting
        if runner is not None:
            await runner.cleanup()
        if bound is not None:
            bound.sock.close()
        fetches, self._fetches = list(self._fetches), set()
        for task in fetches:
            task.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        self._node = None

    # -- guard: who may call, what every call leaves in the audit log ------------
    def _audit(self, route: str, actor: str, outcome: str, subject: str = "",
               **detail: str | int | float | bool) -> None:
        node = self._node
        if node is not None and node.audit is not None:
            node.audit.append(f"control.{route}", actor[:64], outcome, subject, **detail)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        uid = peer_uid(transport.get_extra_info("socket")) if transport is not None else None
        try:
            if uid is not None and uid not in (os.getuid(), 0):
                raise BadRequest(403, "wrong_os_user", "only the node's own OS user may use its "
                                                       "control socket")
            return await handler(request)
        except BadRequest as exc:
            return self._refuse(request, uid, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = exc.reason
            if exc.status == 404:
                known = ", ".join(f"/v1/{r}" for r in ROUTES + self._extra)
                reason = f"no control route {request.method} {request.path[:80]} (known: {known})"
            code = re.sub(r"\W+", "_", exc.reason.lower()).strip("_")
            return self._refuse(request, uid, BadRequest(exc.status, code, reason))

    def _refuse(self, request: web.Request, uid: int | None, exc: BadRequest) -> web.Response:
        actor = request[ACTOR_KEY].user if ACTOR_KEY in request else (
            f"uid:{uid}" if uid is not None else "local")
        self._audit(_route_name(request.path, self._extra), actor, "refused", code=exc.code, status=exc.status,
                    uid=uid if uid is not None else -1)
        return web.json_response({"error": exc.code, "reason": exc.reason}, status=exc.status)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_body(await request.read())   # read() enforces client_max_size (413)

    # -- routes -----------------------------------------------------------------------
    async def _user(self, node: "Node", actor: Actor) -> "User":
        """The user record behind a request's token; refuses (audited) otherwise."""
        user = await asyncio.to_thread(node.tokens.verify_token, actor.token)
        if user is None or user.name != actor.user:
            self._audit("login", actor.user, "refused", code="bad_token")
            raise BadRequest(401, "bad_token", f"no valid login for user {actor.user!r} (unknown "
                                               "user, expired or revoked token); log in again "
                                               "with 'medfed user login'")
        return user

    async def _status(self, request: web.Request) -> web.Response:
        node = self._require_node()
        counts = await node.store.counts()
        members = (len(node.membership.roster.current.active())
                   if node.membership is not None else 0)
        self._audit("status", f"uid:{os.getuid()}", "ok")
        return web.json_response({
            "node_id": node.node_id, "name": node.cfg.name, "ports": asdict(node.ports),
            "counts": asdict(counts), "members": members, "pending_jobs": counts.pending_jobs,
            "federation": await node_federation_status(node),
            "dicom": {"receivers": node.dicom.receivers.describe()
                      if node.dicom is not None and node.dicom.receivers is not None
                      else None}})

    async def _login(self, request: web.Request) -> web.Response:
        from node.users import AuthenticationFailed, UserError

        node = self._require_node()
        req = parse_login(await self._body(request))
        try:
            user = await asyncio.to_thread(node.users.authenticate, req.user, req.password)
            token = await asyncio.to_thread(node.tokens.issue_token, user, req.ttl_s)
        except (AuthenticationFailed, UserError) as exc:
            self._audit_user_refused(req.user)
            return web.json_response({"error": "login_failed", "reason": str(exc)}, status=401)
        self._audit("login", user.name, "ok", role=user.role, ttl_s=int(req.ttl_s))
        return web.json_response({"token": token, "user": user.name})

    def _audit_user_refused(self, name: str) -> None:
        node = self._node
        if node is not None and node.audit is not None:
            node.audit.append("user.refused", name[:64], "refused", code="login_failed",
                              via="cli")

    async def _query(self, request: web.Request) -> web.Response:
        from node.query.service import FederatedQueryError

        node = self._require_node()
        req = parse_query(await self._body(request))
        request[ACTOR_KEY] = req.actor
        user = await self._user(node, req.actor)
        service = node.service("federated-query")
        if service is None:
            raise BadRequest(503, "no_query_service", "this node runs no federated-query service")
        try:
            answer = await service.query(  # type: ignore[attr-defined]
                req.query, user=user, purpose=req.actor.purpose, broadcast=req.broadcast,
                deadline_s=req.deadline_s)
        except FederatedQueryError as exc:
            raise BadRequest(409, "query_unavailable", str(exc)) from None
        self._audit("query", req.actor.user, "ok", role=user.role, purpose=req.actor.purpose,
                    sites=len(answer.sites), patients=len(answer.patients))
        return web.json_response(answer.to_json())

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        node = self._require_node()
        req = parse_fetch(await self._body(request))
        request[ACTOR_KEY] = req.actor
        user = await self._user(node, req.actor)
        task, progress = start_fetch(node, req, user)
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            sent = (-1, -1)
            while not task.done():
                await asyncio.wait({task}, timeout=PROGRESS_EVERY_S)
                if progress.latest != sent:
                    sent = progress.latest
                    await response.write(_line({"bytes": sent[0], "instances": sent[1]}))
        except BaseException:   # the client hung up or the node stops: nothing is written
            if not task.done():
                task.cancel()
                self._audit("fetch", req.actor.user, "cancelled",
                            purpose=req.actor.purpose, format=req.fmt, identified=req.identified)
            raise
        await response.write(_line(self._outcome(req, task)))
        await response.write_eof()
        return response

    def _outcome(self, req: FetchRequest, task: "asyncio.Task[Any]") -> dict[str, Any]:
        actor = req.actor
        if task.cancelled():
            return {"error": "the node is stopping; fetch again when it runs", "kind": "cancelled"}
        exc = task.exception()
        if exc is None:
            result = task.result()
            self._audit("fetch", actor.user, "ok", result.bundle_id,
                        purpose=actor.purpose, format=req.fmt, identified=req.identified,
                        instances=result.instances, source=result.source[:80])
            return {"result": {"bundle_id": result.bundle_id, "instances": result.instances,
                               "stored_bytes": result.stored_bytes, "plain_bytes": result.plain_bytes,
                               "source": result.source, "identified": result.identified,
                               "outputs": [str(p) for p in result.outputs],
                               "attempts": list(result.attempts)}}
        if isinstance(exc, EXPECTED_ERRORS):
            message, kind = str(exc), type(exc).__name__
        else:
            # the traceback's code lines only: an exception message may quote DICOM values
            log.error("control fetch failed unexpectedly (%s):\n%s", type(exc).__name__,
                      "".join(traceback.format_tb(exc.__traceback__)))
            message = f"the node hit an internal error ({type(exc).__name__}); see its log"
            kind = "internal"
        self._audit("fetch", actor.user, "failed", purpose=actor.purpose,
                    format=req.fmt, identified=req.identified, kind=kind)  # no message: may name paths
        return {"error": message, "kind": kind}

    def _service_route(self, name: str, route: ServiceRoute) -> Handler:
        """NDJSON: the route's event lines as they come, then its result or error line.
        A route refuses bad input by raising BadRequest (answered 4xx, audited)."""
        async def handle(request: web.Request) -> web.StreamResponse:
            node = self._require_node()
            body = await self._body(request)
            actor = request[ACTOR_KEY] = parse_actor(body)
            user = await self._user(node, actor)
            events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            task = asyncio.ensure_future(route(node, body, user, actor.purpose, events.put_nowait))
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            try:
                await response.prepare(request)
                while not (task.done() and events.empty()):
                    waiter = asyncio.ensure_future(events.get())
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    if waiter.done():
                        await response.write(_line({"event": waiter.result()}))
                    else:
                        waiter.cancel()
            except BaseException:
                task.cancel()
                raise
            exc = task.exception()
            if exc is None:
                self._audit(name, actor.user, "ok", role=user.role, purpose=actor.purpose)
                await response.write(_line({"result": task.result()}))
            else:
                kind = "refused" if isinstance(exc, BadRequest) else "internal"
                if kind == "internal":
                    log.error("control %s failed unexpectedly (%s):\n%s", name, type(exc).__name__,
                              "".join(traceback.format_tb(exc.__traceback__)))
                message = exc.reason if isinstance(exc, BadRequest) else (
                    f"the node hit an internal error ({type(exc).__name__}); see its log")
                self._audit(name, actor.user, "failed", role=user.role, purpose=actor.purpose,
                            kind=kind)
                await response.write(_line({"error": message, "kind": kind}))
            await response.write_eof()
            return response
        return handle

    def _require_node(self) -> "Node":
        if self._node is None:
            raise BadRequest(503, "stopping", "the node is stopping")
        return self._node
