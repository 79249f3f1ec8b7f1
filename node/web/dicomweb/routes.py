"""The DICOMweb routes of one node, each behind authentication and one error mapping.

Two roots: ``{prefix}/`` answers for the whole federation (QIDO asks every site; WADO
fetches other sites' series into memory), ``{prefix}/local/`` only from this node's store.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Awaitable, Callable

from aiohttp import web

from node.pacs.qr_attributes import QueryLevel

from . import qido, stow, wado
from .context import DicomwebContext
from .errors import DicomwebError
from .local_instances import hold_pins
from .multipart import MultipartError
from .qido_query import QidoError
from .requester import Requester, requester_for
from .uids import BadUid

log = logging.getLogger("medfed.dicomweb")
Handler = Callable[[DicomwebContext, web.Request, Requester, bool], Awaitable[web.StreamResponse]]

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


def _wrap(ctx: DicomwebContext, action: str, handler: Handler,
          federated: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        who = await requester_for(request, ctx.authenticate, ctx.node)
        try:
            with hold_pins():     # the fronted PACS's cached files stay while they are sent
                return await handler(ctx, request, who, federated)
        except (BadUid, QidoError, MultipartError) as exc:
            ctx.audit(f"dicomweb.{action}", who, "refused", reason=str(exc)[:160])
            raise web.HTTPBadRequest(text=str(exc)) from None
        except DicomwebError as exc:
            outcome = "denied" if exc.status == 403 else "refused"
            ctx.audit(f"dicomweb.{action}", who, outcome, reason=str(exc)[:160])
            raise _http_error(exc.status, str(exc)) from None
    return handle


def _http_error(status: int, text: str) -> web.HTTPException:
    error = web.HTTPException(text=text)
    error.set_status(status)
    return error


def _routes(ctx: DicomwebContext, root: str, federated: bool) -> list[web.RouteDef]:
    def get(path: str, action: str, handler: Handler) -> web.RouteDef:
        return web.get(root + path, _wrap(ctx, action, handler, federated), allow_head=False)

    def level(lv: QueryLevel) -> Handler:
        return partial(qido.search, level=lv)  # type: ignore[return-value]

    routes = [
        get("/studies", "search", level(QueryLevel.STUDY)),
        get("/series", "search", level(QueryLevel.SERIES)),
        get("/instances", "search", level(QueryLevel.IMAGE)),
        get(_STUDY + "/series", "search", level(QueryLevel.SERIES)),
        get(_STUDY + "/instances", "search", level(QueryLevel.IMAGE)),
        get(_SERIES + "/instances", "search", level(QueryLevel.IMAGE)),
    ]
    for path in (_STUDY, _SERIES, _INSTANCE):
        routes += [get(path, "retrieve", wado.retrieve),
                   get(path + "/metadata", "metadata", wado.metadata)]
    routes += [
        get(_INSTANCE + "/frames/{frames}", "frames", wado.frames),
        get(_INSTANCE + "/frames/{frames}/rendered", "rendered", wado.rendered),
        get(_INSTANCE + "/rendered", "rendered", wado.rendered),
        get(_INSTANCE + "/bulk/{tag}", "bulk", wado.bulk),
        web.post(root + "/studies", _wrap(ctx, "store", stow.store, federated)),
        web.post(root + _STUDY, _wrap(ctx, "store", stow.store, federated)),
    ]
    return routes


def dicomweb_routes(ctx: DicomwebContext) -> list[web.RouteDef]:
    routes = _routes(ctx, ctx.prefix, True) + _routes(ctx, ctx.prefix + "/local", False)
    routes.append(web.get(ctx.prefix + "/searches/{search}",
                          _wrap(ctx, "search", qido.search_status, True), allow_head=False))
    return routes
