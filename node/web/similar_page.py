"""Find similar cases (issue 14) in the web app: the federated similarity search for one of
this hospital's series, results streaming in per site, the clinician's diagnosis.

``/similar?series=REF`` is the page (reached from a home series in the search results,
or from OHIF's study through ``/similar?study=UID``). ``/api/similar`` streams the search
as server-sent events: an ``update`` each time a site answers (the strip of site
statuses), then ``done`` with the ranked matches — score, site, modality, body part,
month and the de-identified diagnosis where that site's policy releases it — or
``failed`` with the reason. Each match opens in OHIF (``/similar/open``: its study is
found with a series-level federated query for the match's patient pseudonym, then
the viewer opens it by the UID DICOMweb here knows). ``POST /api/similar/diagnosis``
records the clinician's diagnosis for their own case at home, linked to the run and the
matches they used, with a signed provenance record — the same route code as
``medfed similar`` / ``medfed diagnose`` (``node.similar.control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from node.control.wire import BadRequest
from node.deid.actions import keyed_uid
from node.query.model import FederatedQuery, QueryError
from node.query.service import FederatedQueryError
from node.similar.control import diagnose_route, search_route
from node.similar.messages import MAX_TOP
from node.users import UserRefused

from .audit import audit_web
from .home_uids import real_study_uids
from .keys import ACCOUNTS_KEY, NODE_KEY, PAGES_KEY
from .pages import render
from .principal import Principal, authenticate
from .search_view import Chip

METHODS = ("hist", "embed")


async def _principal(request: web.Request) -> Principal:
    principal = await authenticate(request)
    assert principal is not None   # the gate lets no anonymous request reach here
    return principal


def _event(kind: str, doc: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


async def home_series_of_study(node: Any, study_uid: str) -> list[dict[str, str]]:
    """This node's series of a study named by its real or keyed UID (those OHIF shows),
    with the keyed reference a similarity search takes; [] when not stored here."""
    membership = node.membership
    if membership is None or membership.secrets is None or not study_uid:
        return []
    key = membership.secrets.uid_key
    rows = await node.store.fetchall(
        "SELECT st.study_uid, se.series_uid, se.modality, se.body_part, se.series_number "
        "FROM series se JOIN studies st ON st.id = se.study_id WHERE EXISTS (SELECT 1 FROM "
        "instances i WHERE i.series_id = se.id AND i.path IS NOT NULL) ORDER BY se.id")
    out = []
    for study, series, modality, body_part, number in rows:
        if study_uid in (str(study), keyed_uid(str(study), key)):
            out.append({"ref": keyed_uid(str(series), key), "modality": str(modality or ""),
                        "body_part": str(body_part or ""),
                        "number": "" if number is None else str(number)})
    return out


async def similar_page(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    node = request.config_dict[NODE_KEY]
    series = request.query.get("series", "").strip()[:200]
    choices = await home_series_of_study(node, request.query.get("study", "").strip()[:128])
    if not series and len(choices) == 1:
        series = choices[0]["ref"]
    values = {"series": series, "modality": request.query.get("modality", "")[:16],
              "body_part": request.query.get("body_part", "")[:16],
              "top": request.query.get("top", "10")[:3], "method": request.query.get("method", "hist")}
    study_asked = bool(request.query.get("study"))
    return render(request, "similar.html", title="Find similar cases", values=values,
                  purposes=principal.purposes, methods=METHODS, choices=choices,
                  study_asked=study_asked, max_top=MAX_TOP)


def _chips(sites: list[dict[str, Any]], waiting: list[str]) -> list[Chip]:
    chips = []
    for s in sites:
        detail = (f"{s.get('matches', 0)} of {s.get('scanned', 0)} scanned"
                  if s.get("status") == "ok" else str(s.get("reason") or ""))
        chips.append(Chip(str(s.get("site")), str(s.get("status")),
                          float(s.get("latency_ms") or 0.0), str(s.get("level") or ""), detail))
    answered = {c.site for c in chips}
    chips += [Chip(name, "waiting", 0.0) for name in waiting if name not in answered]
    return chips


def _body(query: Any) -> dict[str, Any]:
    try:
        top = int(query.get("top") or 10)
    except ValueError:
        raise BadRequest(400, "bad_top", f"top must be a whole number from 1 to {MAX_TOP}") from None
    method = query.get("method") or "hist"
    return {"series": query.get("series", "").strip(), "method": method,
            "modality": (query.get("modality") or "").strip().upper() or None,
            "body_part": (query.get("body_part") or "").strip().upper() or None, "top": top}


async def similar_stream(request: web.Request) -> web.StreamResponse:
    principal = await _principal(request)
    node = request.config_dict[NODE_KEY]
    pages = request.config_dict[PAGES_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    purpose = request.query.get("purpose", "") or (principal.purposes[:1] or ("",))[0]
    try:
        user = await request.config_dict[ACCOUNTS_KEY].current(principal, node.audit)
        if not user.may_state(purpose):
            raise BadRequest(403, "bad_purpose", "your role does not allow that purpose of use")
        body = _body(request.query)
    except UserRefused as exc:
        audit_web(request, "similar", "refused", reason=exc.code)
        await response.write(_event("failed", {"reason": exc.reason}))
        return response
    except BadRequest as exc:
        audit_web(request, "similar", "refused", reason=exc.code)
        await response.write(_event("failed", {"reason": exc.reason}))
        return response
    members = ([m.name for m in node.membership.roster.current.active()]
               if node.membership is not None else [])
    sites: list[dict[str, Any]] = []
    changed = asyncio.Event()

    def emit(event: dict[str, Any]) -> None:
        sites.append(event)
        changed.set()

    def strip() -> str:
        return pages.html(request, "_strip.html", chips=_chips(sites, members))

    await response.write(_event("update", {"strip": strip()}))
    task = asyncio.ensure_future(search_route(node, body, user, purpose, emit))
    try:
        while not task.done():
            waiter = asyncio.ensure_future(changed.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if changed.is_set():
                changed.clear()
                await response.write(_event("update", {"strip": strip()}))
        answer = task.result()
    except BadRequest as exc:
        audit_web(request, "similar", "refused", reason=exc.code)
        await response.write(_event("failed", {"reason": exc.reason}))
        return response
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    sites[:] = answer["sites"]
    audit_web(request, "similar", "ok", answer["run_id"], purpose=purpose,
              method=answer["method"], sites=len(sites),
              answered=sum(s["status"] == "ok" for s in sites), matches=len(answer["matches"]))
    results = pages.html(request, "_similar.html", answer=answer, purpose=purpose)
    await response.write(_event("done", {"strip": strip(), "results": results,
                                         "run": answer["run_id"]}))
    return response


async def record_diagnosis(request: web.Request) -> web.Response:
    principal = await _principal(request)
    node = request.config_dict[NODE_KEY]
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return web.json_response({"error": "bad_request", "reason": "send a JSON object"},
                                 status=400)
    purpose = str(body.get("purpose") or (principal.purposes[:1] or ("",))[0])
    try:
        user = await request.config_dict[ACCOUNTS_KEY].current(principal, node.audit)
        if not user.may_state(purpose):
            raise BadRequest(403, "bad_purpose", "your role does not allow that purpose of use")
        answer = await diagnose_route(node, {k: body.get(k) for k in
                                             ("series", "diagnosis", "report", "run", "matches")
                                             if body.get(k) is not None}, user, purpose,
                                      lambda event: None)
    except UserRefused as exc:
        audit_web(request, "diagnosis", "refused", reason=exc.code)
        return web.json_response({"error": exc.code, "reason": exc.reason}, status=403)
    except BadRequest as exc:
        audit_web(request, "diagnosis", "refused", reason=exc.code)
        return web.json_response({"error": exc.code, "reason": exc.reason}, status=exc.status)
    record = answer["record"]
    audit_web(request, "diagnosis", "ok", str(record.get("record_id", "")),
              run=str(body.get("run") or ""))
    return web.json_response({"record_id": record.get("record_id"), "digest": record.get("digest")})


async def open_match(request: web.Request) -> web.StreamResponse:
    """The viewer for a match: its study found by a series-level federated query for the
    match's patient pseudonym (the site's own policy answers it), then OHIF."""
    principal = await _principal(request)
    node = request.config_dict[NODE_KEY]
    site, ref = request.query.get("site", ""), request.query.get("ref", "")
    patient = request.query.get("patient", "")
    purpose = request.query.get("purpose", "") or (principal.purposes[:1] or ("",))[0]
    service = node.service("federated-query")
    try:
        user = await request.config_dict[ACCOUNTS_KEY].current(principal, node.audit)
        if service is None or not patient or not ref:
            raise QueryError("name the match's site, series and patient pseudonym")
        query = FederatedQuery(patient_pseudonym=patient, level="series")
        answer = await service.query(query, user=user, purpose=purpose)
    except (QueryError, FederatedQueryError, UserRefused) as exc:
        audit_web(request, "similar.open", "refused", reason=type(exc).__name__)
        return render(request, "error.html", status=400, title="Cannot open the match",
                      error=str(getattr(exc, "reason", exc)))
    for site_answer in answer.answers:
        if site_answer.site.node_id != site or site_answer.status != "ok":
            continue
        for row in site_answer.rows:
            if row.get("series_uid") != ref:
                continue
            uid = str(row.get("study_uid_real") or row.get("study_uid") or "")
            if site == node.node_id:
                uid = (await real_study_uids(node, [row])).get(uid, uid)
            audit_web(request, "similar.open", "ok", ref[:64], site=site[:16])
            raise web.HTTPSeeOther(f"/viewer?StudyInstanceUIDs={uid}")
    audit_web(request, "similar.open", "failed", ref[:64], site=site[:16])
    return render(request, "error.html", status=404, title="Match not available",
                  error="The site holding this match did not list it to you now (its policy, "
                        "or it did not answer in time). Try again, or search for it.")


def add_similar_routes(app: web.Application) -> None:
    app.router.add_get("/similar", similar_page)
    app.router.add_get("/similar/open", open_match)
    app.router.add_get("/api/similar", similar_stream)
    app.router.add_post("/api/similar/diagnosis", record_diagnosis)
