"""The similarity routes of the node's control socket (``medfed similar`` while it runs).

``similar``: one search; an event line per site as it answers, then the ranked result.
``diagnose``: record a diagnosis for this node's series. ``provenance``: verify or export
the provenance records. Bodies are parsed strictly; a mistake is a ``BadRequest`` (4xx,
audited by the control service) naming the field, never a half-run search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from node.control.wire import BadRequest
from node.net.assertion import UserAssertion
from node.users import User, UserRefused, user_assertion

from .messages import MAX_TOP
from .provjson import to_prov_json
from .service import SimilarityError, SimilarityService, site_json

if TYPE_CHECKING:
    from node.node import Node

Emit = Callable[[dict[str, Any]], None]


def _text(doc: Mapping[str, Any], key: str, *, limit: int, required: bool = False) -> str:
    value = doc.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > limit or (required and not value):
        raise BadRequest(400, f"bad_{key}", f"{key} must be text of at most {limit} characters"
                         + (" (required)" if required else ""))
    return value


def _number(doc: Mapping[str, Any], key: str, default: float | None, low: float,
            high: float) -> float | None:
    value = doc.get(key, default)
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not low <= value <= high):
        raise BadRequest(400, f"bad_{key}", f"{key} must be a number from {low:g} to {high:g}")
    return value


def assertion_for(node: "Node", user: User, purpose: str) -> UserAssertion:
    """The signed assertion for ``user`` (role and department from the record)."""
    try:
        return user_assertion(node.identity, user, purpose, now=time.time())
    except UserRefused as exc:
        raise BadRequest(403, exc.code, exc.reason) from None


def _service(node: "Node") -> SimilarityService:
    svc = node.service(SimilarityService.name)
    if not isinstance(svc, SimilarityService):
        raise BadRequest(503, "no_similarity_service", "this node runs no similarity service")
    return svc


async def search_route(node: "Node", body: dict[str, Any], user: User, purpose: str, emit: Emit) -> dict[str, Any]:
    svc = _service(node)
    top = _number(body, "top", 10, 1, MAX_TOP)
    if top is None or not float(top).is_integer():
        raise BadRequest(400, "bad_top", f"top must be a whole number from 1 to {MAX_TOP}")
    try:
        answer = await svc.search(
            _text(body, "series", limit=200, required=True), assertion_for(node, user, purpose),
            method_id=_text(body, "method", limit=32) or "hist",
            modality=_text(body, "modality", limit=16) or None,
            body_part=_text(body, "body_part", limit=16) or None, top=int(top),
            deadline_s=_number(body, "deadline_s", None, 0.1, 3600),
            broadcast=bool(body.get("broadcast", False)),
            on_site=lambda answer: emit(site_json(answer)))
    except SimilarityError as exc:
        raise BadRequest(409, "similarity_unavailable", str(exc)) from None
    return answer.to_json()


async def diagnose_route(node: "Node", body: dict[str, Any], user: User, purpose: str, emit: Emit) -> dict[str, Any]:
    svc = _service(node)
    matches = body.get("matches", [])
    if not isinstance(matches, list) or len(matches) > MAX_TOP or not all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in matches):
        raise BadRequest(400, "bad_matches", "matches must be a list of ranks (whole numbers >= 1)")
    try:
        record = await svc.record_diagnosis(
            _text(body, "series", limit=200, required=True), assertion_for(node, user, purpose),
            diagnosis=_text(body, "diagnosis", limit=200, required=True),
            report=_text(body, "report", limit=10000), run_id=_text(body, "run", limit=64),
            match_ranks=tuple(matches))
    except SimilarityError as exc:
        raise BadRequest(409, "diagnosis_refused", str(exc)) from None
    return {"record": record.to_dict()}


async def provenance_route(node: "Node", body: dict[str, Any], user: User, purpose: str, emit: Emit) -> dict[str, Any]:
    svc = _service(node)
    run_id = _text(body, "run", limit=64) or None
    action = body.get("action", "verify")
    if action == "export":
        return {"prov_json": to_prov_json(await svc.provenance_records(run_id))}
    if action != "verify":
        raise BadRequest(400, "bad_action", "action must be verify or export")
    report = await svc.verify_provenance(run_id)
    return {"ok": report.ok, "records": report.records, "problems": report.problems,
            "audit_ok": report.audit_ok}


ROUTES = {"similar": search_route, "diagnose": diagnose_route, "provenance": provenance_route}
