"""Answering a federated query at this site: ``POST /v1/query`` and the home site's own answer.

Never trust the asker: the requesting node only sends the query and its signed user
assertion. This site checks the assertion, decides the answer level with its OWN policy,
runs the query on its own SQLite and audits what it served (``query.serve``) or refused.
The home site answers its own users through ``answer_query`` too, without a network call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from node.audit.log import AuditLog
from node.config.model import NodeConfig
from node.net.assertion import AssertionRefused, UserAssertion, accept_assertion
from node.net.membership import Membership
from node.net.reqsign import RequestRefused
from node.net.roster import Member
from node.policy import Level, PolicyError, decide, policy_from_dict
from node.store.db import MetadataStore

from .model import FederatedQuery, QueryError
from .serve_sql import run_query

if TYPE_CHECKING:
    from node.net.server import PeerRequest

QUERY_PATH = "/v1/query"
AUDIT_ACTION = "query.serve"


class SiteContext(Protocol):
    """What serving needs from a site (a running ``Node`` fits; so does the CLI's home site)."""

    cfg: NodeConfig
    store: MetadataStore
    audit: AuditLog | None
    membership: Membership | None


def _actor(sender: Member, assertion: UserAssertion | None) -> str:
    user = assertion.user if assertion is not None else "?"
    return f"{sender.node_id[:16]}/{user}"


def _audit(site: SiteContext, actor: str, outcome: str, **detail: str | int) -> None:
    if site.audit is None:
        raise RequestRefused(503, "audit_unavailable",
                             "this site cannot audit the access, so it does not serve it")
    site.audit.append(AUDIT_ACTION, actor, outcome, **detail)


def _refuse(site: SiteContext, actor: str, status: int, code: str, reason: str,
            **detail: str | int) -> RequestRefused:
    _audit(site, actor, "denied" if status == 403 else "refused", code=code, **detail)
    return RequestRefused(status, code, reason)


async def answer_query(site: SiteContext, sender: Member, body: Mapping[str, Any], *,
                       now: float | None = None) -> dict[str, Any]:
    """The answer this site gives ``sender`` for a request body {query, assertion}."""
    membership = site.membership
    if membership is None:
        raise RequestRefused(503, "not_a_member", "this node has not joined a federation")
    now = time.time() if now is None else now
    try:
        assertion = accept_assertion(body.get("assertion"), membership.roster, sender.node_id,
                                     now=now)
    except AssertionRefused as exc:
        raise _refuse(site, _actor(sender, None), 403, exc.code, exc.reason) from None
    actor = _actor(sender, assertion)
    try:
        query = FederatedQuery.from_json(body.get("query"))
    except QueryError as exc:
        raise _refuse(site, actor, 400, "bad_query", str(exc)) from None
    if query.patient_id is not None:
        raise _refuse(site, actor, 400, "plain_patient_id",
                      "plain patient IDs never leave the home site; send the pseudonym")
    try:
        policy = policy_from_dict(site.cfg.policy)
    except PolicyError as exc:
        raise _refuse(site, actor, 503, "policy_unusable",
                      f"this site's policy cannot be loaded: {exc}") from None
    decision = decide(policy, assertion, sender)
    detail = {"rule": decision.rule or "", "purpose": assertion.purpose,
              "role": assertion.role, "query_level": query.level,
              "filters": ",".join(query.filter_fields)}
    if decision.level is Level.DENY:
        raise _refuse(site, actor, 403, "policy_denied", decision.reason, **detail)
    free_text = query.free_text_fields
    if free_text and decision.level is not Level.IDENTIFIED:
        what = ("searching by patient name" if "patient_name" in free_text
                else "filtering on free text (" + ", ".join(free_text) + ")")
        raise _refuse(site, actor, 403,
                      "name_search_not_allowed" if "patient_name" in free_text
                      else "free_text_not_allowed",
                      f"{what} needs identified access, which this site's policy does not "
                      f"grant ({decision.level.value}); ask without that filter", **detail)
    secrets = membership.secrets
    result = await run_query(site.store, query, decision.level, linkage_key=secrets.linkage_key,
                             uid_key=secrets.uid_key, threshold=policy.small_count_threshold)
    _audit(site, actor, "ok", level=result.level.value, rows=len(result.rows), **detail)
    return {"level": result.level.value, "counts": result.counts, "rows": result.rows,
            "truncated": result.truncated}


def register_query_route(node: Any) -> None:
    """Serve ``POST /v1/query`` on the node's peer API (call before it listens)."""

    async def handle(call: "PeerRequest") -> dict[str, Any]:
        return await answer_query(node, call.sender, call.json)

    node.peer.add_route("POST", QUERY_PATH, handle)
