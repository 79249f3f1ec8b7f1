"""Answering a federated query at this site: ``POST /v1/query`` and the home site's own answer.

Never trust the asker: the requesting node only sends the query and its signed user
assertion. This site checks the assertion, decides the answer level with its OWN policy,
runs the query on its own SQLite and audits what it served (``query.serve``) or refused.
The home site answers its own users through ``answer_query`` too, without a network call;
other sites get the answer streamed as it is read (``stream_answer``, ``answer_wire``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from node.audit.log import AuditLog
from node.config.model import NodeConfig
from node.net.assertion import AssertionRefused, UserAssertion, accept_assertion
from node.net.membership import Membership
from node.net.reqsign import RequestRefused
from node.net.roster import Member
from node.policy import Level, PolicyError, decide, policy_from_dict
from node.store.db import MetadataStore

from .answer_wire import AnswerWriter
from .model import FederatedQuery, QueryError
from .serve_sql import AnswerRows, OpenAnswer, open_query

if TYPE_CHECKING:
    from node.net.server import PeerRequest

log = logging.getLogger(__name__)

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


@dataclass
class ServedAnswer:
    """An answer this site decided to give: audited once its rows were read out."""

    site: SiteContext
    actor: str
    detail: dict[str, str]
    answer: OpenAnswer

    def audit(self, outcome: str, rows: int, **extra: str | int) -> None:
        _audit(self.site, self.actor, outcome, level=self.answer.level.value, rows=rows,
               **self.detail, **extra)


async def open_answer(site: SiteContext, sender: Member, body: Mapping[str, Any], *,
                      now: float | None = None) -> ServedAnswer:
    """Check the request {query, assertion} from ``sender`` and open the answer this
    site's policy allows (refusals are audited and raised as RequestRefused)."""
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
    if site.audit is None:
        raise RequestRefused(503, "audit_unavailable",
                             "this site cannot audit the access, so it does not serve it")
    secrets = membership.secrets
    answer = await open_query(site.store, query, decision.level,
                              linkage_key=secrets.linkage_key, uid_key=secrets.uid_key,
                              threshold=policy.small_count_threshold)
    return ServedAnswer(site, actor, detail, answer)


async def answer_query(site: SiteContext, sender: Member, body: Mapping[str, Any], *,
                       now: float | None = None) -> dict[str, Any]:
    """The whole answer this site gives ``sender`` (the home site's own, no network)."""
    served = await open_answer(site, sender, body, now=now)
    rows = served.answer.rows
    got = [] if rows is None else [r async for r in rows]
    served.audit("ok", len(got))
    return {"level": served.answer.level.value, "counts": served.answer.counts, "rows": got,
            "truncated": rows is not None and rows.truncated}


async def stream_answer(site: SiteContext, call: "PeerRequest", *,
                        deadline_s: float) -> web.StreamResponse:
    """``POST /v1/query``: the answer written as its rows are read (``answer_wire``), in
    batches of ``BATCH_ROWS``, within ``deadline_s``. The audit entry is written after
    the last row and before the closing digest, so an answer the requester accepts was
    audited; a reply that fails part-way ends without its digest (the requester refuses
    it) and is audited as ``reply_aborted``."""
    served = await open_answer(site, call.sender, call.json)
    writer = AnswerWriter()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    rows = served.answer.rows
    batches = _batches(rows)
    prepared = False
    try:
        async with asyncio.timeout(deadline_s):
            batch = await anext(batches, [])   # a failure before any byte: a plain refusal
            await response.prepare(call.http)
            prepared = True
            await response.write(writer.head(served.answer.level.value, served.answer.counts))
            while batch:
                await response.write(writer.rows_chunk(batch))
                batch = await anext(batches, [])
            served.audit("ok", writer.rows)
            await response.write(writer.tail(rows is not None and rows.truncated))
            await response.write_eof()
    except asyncio.CancelledError as exc:   # the requester went away
        if prepared:
            _abort(served, response, call, writer.rows, exc)
        raise
    except Exception as exc:
        if not prepared and isinstance(exc, TimeoutError):
            raise _refuse(site, served.actor, 503, "answer_timeout",
                          f"this site could not read its answer within {deadline_s:g}s",
                          **served.detail) from None
        if not prepared:
            raise
        _abort(served, response, call, writer.rows, exc)
    finally:
        await batches.aclose()
    return response


BATCH_ROWS = 256


async def _batches(rows: AnswerRows | None) -> AsyncIterator[list[dict[str, Any]]]:
    if rows is None:
        return
    batch: list[dict[str, Any]] = []
    async with contextlib.aclosing(rows.__aiter__()) as shaped:
        async for row in shaped:
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


def _abort(served: ServedAnswer, response: web.StreamResponse, call: "PeerRequest",
           sent: int, exc: BaseException) -> None:
    """End a reply part-way: close the connection so the answer lacks its digest."""
    reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    log.warning("query reply to %s aborted after %d rows (%s)", call.sender.node_id[:16],
                sent, reason)
    response.force_close()
    if call.http.transport is not None:
        call.http.transport.close()
    try:
        served.audit("error", sent, code="reply_aborted", error=reason)
    except Exception as audit_exc:  # the reply is refused by the requester anyway
        log.error("could not audit an aborted query reply (%s)", type(audit_exc).__name__)


def register_query_route(node: Any) -> None:
    """Serve ``POST /v1/query`` on the node's peer API (call before it listens)."""

    async def handle(call: "PeerRequest") -> web.StreamResponse:
        return await stream_answer(node, call, deadline_s=node.peer.settings.request_lifetime_s)

    node.peer.add_route("POST", QUERY_PATH, handle)
