"""The federated query as a node service: a clinician asks once, every site answers.

The home node vouches for its user with a signed assertion built from the user's record
(``node.users.user_assertion``: role and department are the record's), turns a patient ID into the
federation pseudonym, asks the planned sites in parallel (itself included, locally) and
merges what arrives before the deadline. Each site decides what to release with its own
policy; this side only reports per site what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Callable, Any, Protocol

from node.identity import NodeIdentity
from node.users import User, UserRefused, user_assertion
from node.net.client import PeerClient
from node.net.roster import Member

from .answer_wire import read_answer
from .fanout import FanOutSettings, SiteAnswer, fan_out
from .merge import MergedCount, MergedPatient, merge_counts, merge_patients
from .model import FederatedQuery
from .planner import BroadcastPlanner, Plan, Planner
from .serve import QUERY_PATH, SiteContext, answer_query, register_query_route


class FederatedQueryError(Exception):
    """The home node cannot run a federated query (not joined, not started, revoked)."""


class HomeContext(SiteContext, Protocol):
    """What asking needs besides serving: the node's key and its peer client."""

    identity: NodeIdentity
    client: PeerClient | None


@dataclass
class SiteStatus:
    site: str
    node_id: str
    status: str
    latency_ms: float
    level: str = ""
    rows: int = 0
    reason: str = ""
    hedged: bool = False

    @classmethod
    def of(cls, answer: SiteAnswer) -> "SiteStatus":
        return cls(answer.site.name, answer.site.node_id, answer.status, answer.latency_ms,
                   answer.level, len(answer.rows), answer.reason, answer.hedged)


@dataclass
class FederatedAnswer:
    plan: Plan
    sites: list[SiteStatus]
    patients: list[MergedPatient]
    counts: dict[str, MergedCount]
    elapsed_ms: float
    answers: list[SiteAnswer] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"plan": {"mode": self.plan.mode, "sites": [m.name for m in self.plan.sites],
                         "skipped": self.plan.skipped, "detail": self.plan.detail},
                "sites": [vars(s) for s in self.sites],
                "patients": [p.to_json() for p in self.patients],
                "counts": {k: c.to_json() for k, c in self.counts.items()},
                "elapsed_ms": self.elapsed_ms}


class FederatedQueryService:
    name = "federated-query"

    def __init__(self, planner: Planner | None = None, *, serve: bool = True,
                 local_answers: bool = True,
                 planner_for: Callable[[Any], Planner] | None = None) -> None:
        """``local_answers=False`` sends the home site's own request over its peer API
        (used by the CLI when the node daemon holds the audit log). ``planner_for``
        builds the planner from the started node (the DHT planner needs its DHT)."""
        self.planner: Planner = planner or BroadcastPlanner()
        self._planner_for = planner_for
        self._serve = serve
        self._local = local_answers
        self._site: HomeContext | None = None

    # -- NodeService ---------------------------------------------------------------
    def register_routes(self, node: Any) -> None:
        if self._serve:
            register_query_route(node)

    async def start(self, node: HomeContext) -> None:
        self._site = node
        if self._planner_for is not None:
            self.planner = self._planner_for(node)

    async def stop(self) -> None:
        self._site = None

    # -- asking --------------------------------------------------------------------
    def _context(self) -> tuple[HomeContext, Member]:
        site = self._site
        if site is None or site.membership is None or site.client is None:
            raise FederatedQueryError("the node is not running as a federation member; "
                                      "join a federation ('medfed join') and start the node")
        me = site.membership.roster.member(site.identity.node_id_hex)
        if me is None:
            raise FederatedQueryError("this node is not an active member of its roster "
                                      "(revoked?); ask the federation operator")
        return site, me

    async def _start(self, q: FederatedQuery, *, user: User, purpose: str, broadcast: bool,
                     deadline_s: float | None) -> tuple[Plan, AsyncIterator[SiteAnswer]]:
        site, me = self._context()
        assert site.membership is not None and site.client is not None
        client = site.client
        wire = q.for_federation(site.membership.secrets.linkage_key)
        try:
            assertion = user_assertion(site.identity, user, purpose)
        except UserRefused as exc:
            if site.audit is not None:
                site.audit.append("user.refused", user.name, "refused", code=exc.code,
                                  via="query", purpose=purpose[:16])
            raise FederatedQueryError(str(exc)) from None
        except ValueError as exc:
            raise FederatedQueryError(str(exc)) from None
        body = {"query": wire.to_json(), "assertion": assertion.to_dict()}
        plan = await self.planner.plan(wire, site.membership.roster.current.active(),
                                       broadcast=broadcast)
        fed = site.cfg.federation
        settings = FanOutSettings(deadline_s if deadline_s is not None else fed.query_deadline_s,
                                  fed.hedge_after_s, fed.max_parallel)
        local = self._local

        async def ask(member: Member, left: float) -> dict[str, Any]:
            if member.node_id == me.node_id and local:
                return await answer_query(site, member, body)
            # streamed by the site; accepted only whole (its closing digest checks out)
            return read_answer(await client.call_bytes(member, "POST", QUERY_PATH, body,
                                                       timeout=left))

        answers = fan_out(plan.sites, ask, settings,
                          hedge=lambda m: m.node_id != me.node_id or not local)
        return plan, answers

    async def stream(self, q: FederatedQuery, *, user: User, purpose: str,
                     broadcast: bool = False,
                     deadline_s: float | None = None) -> AsyncIterator[SiteAnswer]:
        """Per-site answers as they arrive (every planned site exactly once), asked for
        ``user`` (a local user record, e.g. from ``node.users.resolve_user``)."""
        _plan, answers = await self._start(q, user=user, purpose=purpose, broadcast=broadcast,
                                           deadline_s=deadline_s)
        async with contextlib.aclosing(answers):
            async for answer in answers:
                yield answer

    async def query(self, q: FederatedQuery, *, user: User, purpose: str,
                    broadcast: bool = False,
                    deadline_s: float | None = None) -> FederatedAnswer:
        """Everything within the deadline, merged; every planned site has a status."""
        start = asyncio.get_running_loop().time()
        plan, stream = await self._start(q, user=user, purpose=purpose, broadcast=broadcast,
                                         deadline_s=deadline_s)
        async with contextlib.aclosing(stream):
            answers = [a async for a in stream]
        order = {m.node_id: i for i, m in enumerate(plan.sites)}
        answers.sort(key=lambda a: order.get(a.site.node_id, len(order)))
        return FederatedAnswer(plan, [SiteStatus.of(a) for a in answers], merge_patients(answers),
                               merge_counts(answers),
                               round((asyncio.get_running_loop().time() - start) * 1000, 1), answers)


@dataclass
class HomeSite:
    """A home site outside a running Node (the CLI): same attributes a Node offers."""

    cfg: Any
    identity: NodeIdentity
    store: Any
    audit: Any
    membership: Any
    client: PeerClient | None
