"""The federated search page and its event stream.

``GET /search`` renders the form (and, with a query string, starts the search from the
page's script); ``GET /api/search?…`` runs the query through the node's federated query
service and sends server-sent events: ``update`` each time a site answers (the status
strip, the counts and the merged results as server-rendered HTML), then ``done``, or
``failed`` with a reason. The user's handle, role, department and chosen purpose go into
the signed assertion; each site decides with its own policy what that gets.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from aiohttp import web

from node.query.model import QueryError
from node.query.service import FederatedQueryError

from .audit import audit_web
from .home_uids import real_study_uids
from .accounts import UserRefused
from .keys import ACCOUNTS_KEY, NODE_KEY, PAGES_KEY
from .pages import render
from .principal import Principal, authenticate
from .search_view import FORM_FIELDS, SearchView, parse_search, used_fields

MODALITIES = ("CT", "MR", "CR", "DX", "US", "PT", "NM", "MG", "XA")
SEXES = (("", "any"), ("F", "female"), ("M", "male"), ("O", "other"))


async def _principal(request: web.Request) -> Principal:
    principal = await authenticate(request)
    assert principal is not None   # the gate lets no anonymous request reach here
    return principal


def _destinations(request: web.Request) -> list[str]:
    """The home PACS "fetch to home PACS" moves series to (none when not configured)."""
    home = request.config_dict[NODE_KEY].cfg.dicom.home_pacs
    return [home] if home else []


async def search_page(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    values = {name: request.query.get(name, "") for name in FORM_FIELDS}
    return render(request, "search.html", title="Federated search", values=values,
                  autorun=any(values[n] for n in FORM_FIELDS if n != "purpose"),
                  purposes=principal.purposes, modalities=MODALITIES, sexes=SEXES,
                  destinations=_destinations(request))


def _sites(node: Any) -> list[tuple[str, str]]:
    if node.membership is None:
        return []
    return [(m.name, m.node_id) for m in node.membership.roster.current.active()]


def _event(kind: str, doc: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


def _fragments(request: web.Request, view: SearchView) -> dict[str, Any]:
    pages = request.config_dict[PAGES_KEY]
    return {"strip": pages.html(request, "_strip.html", chips=view.chips()),
            "results": pages.html(request, "_results.html", view=view,
                                  patients=view.patients(), counts=view.counts(),
                                  destinations=_destinations(request),
                                  home_id=request.config_dict[NODE_KEY].node_id),
            "finished": view.finished}


async def search_stream(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    node = request.config_dict[NODE_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    try:
        query, purpose = parse_search(request.query, principal.purposes)
    except QueryError as exc:
        audit_web(request, "search", "refused", reason="bad_query")
        await response.prepare(request)
        await response.write(_event("failed", {"reason": str(exc)}))
        return response
    service = node.service("federated-query")
    view = SearchView(_sites(node))
    await response.prepare(request)
    if service is None:
        audit_web(request, "search", "refused", reason="not_a_member")
        await response.write(_event("failed", {"reason": "this node has not joined a "
                                               "federation yet; ask your PACS team"}))
        return response
    try:
        user = await request.config_dict[ACCOUNTS_KEY].current(principal, node.audit)
    except UserRefused as exc:
        audit_web(request, "search", "refused", reason=exc.code)
        await response.write(_event("failed", {"reason": exc.reason}))
        return response
    started = time.monotonic()
    await response.write(_event("update", _fragments(request, view)))
    try:
        stream = service.stream(query, user=user, purpose=purpose)
        async with contextlib.aclosing(stream):
            async for answer in stream:
                view.add(answer)
                if answer.site.node_id == node.node_id and answer.status == "ok":
                    view.real_uids.update(await real_study_uids(node, answer.rows))
                await response.write(_event("update", _fragments(request, view)))
    except (FederatedQueryError, UserRefused) as exc:
        audit_web(request, "search", "failed", reason="unavailable")
        await response.write(_event("failed", {"reason": str(exc)}))
        return response
    view.finish()
    statuses = [a.status for a in view.answers]
    audit_web(request, "search", "ok", fields=used_fields(query), purpose=purpose,
              sites=len(statuses), answered=statuses.count("ok"),
              patients=len(view.patients()),
              elapsed_ms=round((time.monotonic() - started) * 1000))
    await response.write(_event("done", _fragments(request, view)))
    return response


def add_search_routes(app: web.Application) -> None:
    app.router.add_get("/search", search_page)
    app.router.add_get("/api/search", search_stream)
