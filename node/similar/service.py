"""The similarity NodeService: serves ``/v1/similar``, keeps vectors fresh, runs searches.

At a site it computes feature vectors of complete series in the background and answers
computation requests (``scan``). At the home node it turns the clinician's own series
into a vector (the images never leave), signs one computation request, sends it to the
candidate sites planned like a federated query (the DHT planner narrows by modality and
body part), verifies each answer's provenance, ranks the matches, signs its own
``similarity.rank`` record and chains it in the audit log. Diagnoses recorded for the
clinician's case link the run and the matches they used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from node.deid.actions import keyed_uid
from node.net.assertion import UserAssertion
from node.net.roster import Member
from node.query.fanout import FanOutSettings, SiteAnswer, fan_out
from node.query.model import FederatedQuery, QueryError
from node.query.planner import BroadcastPlanner, Plan, Planner
from node.tasks import cancel_and_wait

from . import features as feature_table
from . import records as record_table
from .features import FeatureIndexer, IndexReport, PendingSeries
from .messages import MessageError, build_request
from .method import MethodError, SimilarityMethod
from .provenance import ProvenanceRecord, entity_digest, new_record_id, now_iso, sign_record
from .rank import RankedMatch, answer_parser, rank
from .registry import MethodRegistry, load_registry
from .scan import SIMILAR_PATH, SiteScanner, answer_similarity, register_similarity_route
from .verify import ProvenanceReport, verify_stored
from .volume import VolumeUnavailable

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("medfed.similar")
OnSite = Callable[[SiteAnswer], Any]


class SimilarityError(Exception):
    """The home node cannot run this search or record this diagnosis (the message says why)."""


@dataclass
class SimilarityAnswer:
    run_id: str
    method: str
    version: str
    query_ref: str
    plan: Plan
    sites: list[SiteAnswer]
    matches: list[RankedMatch]
    record: ProvenanceRecord
    elapsed_ms: float
    site_records: list[ProvenanceRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "method": self.method, "version": self.version,
                "query_ref": self.query_ref, "elapsed_ms": self.elapsed_ms,
                "plan": {"mode": self.plan.mode, "sites": [m.name for m in self.plan.sites],
                         "skipped": self.plan.skipped},
                "sites": [site_json(a) for a in self.sites],
                "matches": [m.to_json() for m in self.matches],
                "provenance": self.record.to_dict()}


def site_json(answer: SiteAnswer) -> dict[str, Any]:
    return {"site": answer.site.name, "node_id": answer.site.node_id, "status": answer.status,
            "latency_ms": answer.latency_ms, "level": answer.level, "matches": len(answer.rows),
            "scanned": answer.counts.get("scanned", 0), "reason": answer.reason,
            "scan_ms": answer.payload.get("scan_ms", 0.0)}


@dataclass(frozen=True)
class LocalSeries:
    series_id: int
    series_uid: str
    keyed_ref: str
    modality: str
    last_instance_at: float


class SimilarityService:
    name = "similarity"

    def __init__(self, *, registry: MethodRegistry | None = None, serve: bool = True,
                 index: bool = True, poll_s: float = 2.0, idle_s: float | None = None,
                 planner: Planner | None = None) -> None:
        """``index=False``: vectors only on demand (``index_now``), e.g. in the simulator.
        ``idle_s``: a series is complete after this idle time (default: the config's)."""
        self.registry = registry or load_registry()
        self.scanner = SiteScanner(self.registry)
        self._serve, self._index, self._poll_s, self._idle_s = serve, index, poll_s, idle_s
        self._planner = planner
        self._node: Node | None = None
        self._task: asyncio.Task[None] | None = None
        self.indexer: FeatureIndexer | None = None

    # -- NodeService ---------------------------------------------------------------
    def control_routes(self) -> dict[str, Any]:
        """Routes on the node's control socket (``medfed similar`` while the node runs)."""
        from .control import ROUTES
        return dict(ROUTES)

    def register_routes(self, node: "Node") -> None:
        if self._serve:
            register_similarity_route(node, self.scanner)

    async def start(self, node: "Node") -> None:
        self._node = node
        await feature_table.ensure_schema(node.store)
        await record_table.ensure_schema(node.store)
        self.indexer = FeatureIndexer(node.store, node.files, self.registry)
        self.scanner.bundle_ids = self._bundle_id
        if self._index:
            self._task = asyncio.create_task(self._loop(), name="medfed-similarity-index")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._node = None

    @property
    def node(self) -> "Node":
        if self._node is None:
            raise SimilarityError("the similarity service is not started")
        return self._node

    async def _loop(self) -> None:
        idle = self.node.cfg.series_idle_s if self._idle_s is None else self._idle_s
        while True:
            try:
                await self.indexer.run_once(idle_s=idle)  # type: ignore[union-attr]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep indexing alive; the next pass retries
                log.error("similarity indexing pass failed: %s", type(exc).__name__)
            await asyncio.sleep(self._poll_s)

    async def index_now(self) -> IndexReport:
        """Compute every missing vector now, whatever the idle time (tests, sim, bench)."""
        assert self.indexer is not None
        return await self.indexer.run_all(idle_s=0.0)

    async def _bundle_id(self, series_uid: str) -> str:
        publisher = self.node.service("publisher")
        catalog = getattr(publisher, "catalog", None)
        if catalog is None:
            return ""
        entry = await catalog.by_series(series_uid)
        return entry.bundle_id if entry is not None and entry.reached("published") else ""

    # -- home side: the query series --------------------------------------------------
    def _secrets(self) -> Any:
        membership = self.node.membership
        if membership is None or membership.secrets is None:
            raise SimilarityError("this node has not joined a federation; run 'medfed join' first")
        return membership.secrets

    async def resolve_series(self, ref: str) -> LocalSeries:
        """This node's series named by its SeriesInstanceUID or keyed UID ([OWNER:]REF)."""
        owner, _, name = ref.strip().rpartition(":")
        if owner and owner.lower() != self.node.node_id:
            raise SimilarityError("the query series must be stored at this node: images never "
                                  "leave their site, so a remote series cannot be the query")
        uid_key = self._secrets().uid_key
        rows = await self.node.store.fetchall(
            "SELECT se.id, se.series_uid, se.modality, se.last_instance_at FROM series se "
            "WHERE EXISTS (SELECT 1 FROM instances i WHERE i.series_id = se.id AND i.path IS NOT NULL)")
        for row in rows:
            uid = str(row[1])
            keyed = keyed_uid(uid, uid_key)
            if name in (uid, keyed):
                return LocalSeries(int(row[0]), uid, keyed, str(row[2]), float(row[3]))
        raise SimilarityError(f"no series {name[:64]!r} with images stored at this node "
                              "(give its SeriesInstanceUID or the keyed UID a query shows)")

    def method(self, method_id: str) -> SimilarityMethod:
        try:
            return self.registry.get(method_id)
        except MethodError as exc:
            raise SimilarityError(str(exc)) from None

    async def query_vector(self, series: LocalSeries, method: SimilarityMethod) -> np.ndarray:
        """The cached vector, computed now if the series is new or changed."""
        assert self.indexer is not None
        row = await self.node.store.fetchone(
            "SELECT vector, problem, source_at FROM similarity_features WHERE series_id = ? "
            "AND method = ? AND version = ?", (series.series_id, method.id, method.version))
        if row is None or float(row[2]) < series.last_instance_at:
            pending = PendingSeries(series.series_id, series.series_uid, series.last_instance_at)
            vectors, problem = await self.indexer.compute(pending, [method])
            if problem:
                raise SimilarityError(f"cannot compute the query series' features: {problem}")
            return vectors[method.id]
        if row[0] is None:
            raise SimilarityError(f"cannot compute the query series' features: {row[1]}")
        return np.frombuffer(bytes(row[0]), dtype="<f4").copy()

    # -- home side: the search ---------------------------------------------------------
    def _me(self) -> Member:
        node = self.node
        if node.membership is None or node.client is None:
            raise SimilarityError("the node is not running as a federation member; join a "
                                  "federation ('medfed join') and start the node")
        me = node.membership.roster.member(node.node_id)
        if me is None:
            raise SimilarityError("this node is not an active member of its roster (revoked?)")
        return me

    def _planner_now(self) -> Planner:
        if self._planner is not None:
            return self._planner
        query = self.node.service("federated-query")
        return getattr(query, "planner", None) or BroadcastPlanner()

    async def search(self, series_ref: str, assertion: UserAssertion, *, method_id: str = "hist",
                     modality: str | None = None, body_part: str | None = None, top: int = 10,
                     deadline_s: float | None = None, broadcast: bool = False,
                     on_site: OnSite | None = None) -> SimilarityAnswer:
        """Ask every candidate site, rank what arrives before the deadline."""
        started = time.monotonic()
        node, me = self.node, self._me()
        assert node.membership is not None and node.client is not None
        method = self.method(method_id)
        series = await self.resolve_series(series_ref)
        vector = await self.query_vector(series, method)
        try:
            plan_query = FederatedQuery(modality=modality, body_part=body_part, level="series")
            request = build_request(node.identity, method=method.id, version=method.version,
                                    vector=vector, modality=modality, body_part=body_part, top=top,
                                    exclude=(series.keyed_ref,))
        except (QueryError, MessageError) as exc:
            raise SimilarityError(str(exc)) from None
        body = {"request": request.to_json(), "assertion": assertion.to_dict()}
        plan = await self._planner_now().plan(plan_query, node.membership.roster.current.active(),
                                              broadcast=broadcast)
        if me.node_id not in {m.node_id for m in plan.sites}:
            plan.sites.append(me)  # the home site's other cases are candidates too
        fed = node.cfg.federation
        settings = FanOutSettings(deadline_s if deadline_s is not None else fed.query_deadline_s,
                                  fed.hedge_after_s, fed.max_parallel)
        client = node.client

        async def ask(member: Member, left: float) -> dict[str, Any]:
            if member.node_id == me.node_id:
                return await answer_similarity(node, self.scanner, member, body)
            return await client.call(member, "POST", SIMILAR_PATH, body, timeout=left)

        answers: list[SiteAnswer] = []
        stream = fan_out(plan.sites, ask, settings, hedge=lambda m: m.node_id != me.node_id,
                         parse=answer_parser(request))
        async with contextlib.aclosing(stream):
            async for answer in stream:
                answers.append(answer)
                if on_site is not None:
                    on_site(answer)
        order = {m.node_id: i for i, m in enumerate(plan.sites)}
        answers.sort(key=lambda a: order.get(a.site.node_id, len(order)))
        ranked = rank(answers, top)
        site_records = [ProvenanceRecord.from_dict(a.payload["provenance"])
                        for a in answers if a.status == "ok"]
        record = sign_record(node.identity, ProvenanceRecord(
            new_record_id(), "similarity.rank", node.node_id, node.cfg.name, now_iso(),
            assertion.user,
            {"id": method.id, "version": method.version,
             "params": {**method.params(), "top": top, "modality": modality,
                        "body_part": body_part, "merge": "score desc, site name, ref"}},
            [{"ref": series.keyed_ref, "role": "query_series"},
             {"digest": entity_digest(list(request.vector)), "role": "query_vector"},
             {"digest": entity_digest(request.claims()), "role": "request",
              "request_id": request.request_id}],
            [{"rank": m.rank, "site": m.node_id, "ref": m.match.ref, "bundle_id": m.match.bundle_id,
              "score": m.match.score} for m in ranked],
            [{"record_id": r.record_id, "digest": r.digest} for r in site_records]))
        await record_table.save_records(node.store, request.request_id, [*site_records, record])
        assert node.audit is not None
        node.audit.append("similar.rank", f"{node.node_id[:16]}/{assertion.user}", "ok",
                          request.request_id, record=record.record_id, digest=record.digest,
                          method=method.id, sites=len(answers),
                          sites_ok=sum(a.status == "ok" for a in answers), matches=len(ranked))
        return SimilarityAnswer(request.request_id, method.id, method.version, series.keyed_ref,
                                plan, answers, ranked, record,
                                round((time.monotonic() - started) * 1000, 1), site_records)

    # -- home side: the clinician's conclusion ------------------------------------------
    async def record_diagnosis(self, series_ref: str, assertion: UserAssertion, *, diagnosis: str,
                               report: str = "", run_id: str = "",
                               match_ranks: tuple[int, ...] = ()) -> ProvenanceRecord:
        """Store a diagnosis for this node's series, linked to a run and the matches used."""
        node = self.node
        diagnosis, report = diagnosis.strip(), report.strip()
        if not 1 <= len(diagnosis) <= 200 or not diagnosis.isprintable():
            raise SimilarityError("the diagnosis must be 1-200 printable characters")
        if len(report) > 10000:
            raise SimilarityError("the report must be at most 10,000 characters")
        series = await self.resolve_series(series_ref)
        links: list[dict[str, str]] = []
        used: list[dict[str, Any]] = []
        if run_id:
            rank_record = await self._rank_record(run_id)
            outputs = {int(o["rank"]): o for o in rank_record.outputs}
            missing = [r for r in match_ranks if r not in outputs]
            if missing:
                raise SimilarityError(f"run {run_id} has no match ranked {missing[0]} "
                                      f"(it has {len(outputs)})")
            used = [{**outputs[r], "role": "match"} for r in match_ranks]
            links = [{"record_id": rank_record.record_id, "digest": rank_record.digest}]
        elif match_ranks:
            raise SimilarityError("matches are named by their rank in a run: give --run too")
        record = sign_record(node.identity, ProvenanceRecord(
            new_record_id(), "diagnosis.record", node.node_id, node.cfg.name, now_iso(),
            assertion.user, {"id": "clinician", "version": "1", "params": {}},
            [{"ref": series.keyed_ref, "role": "case"}, *used],
            [{"digest": entity_digest({"diagnosis": diagnosis, "report": report}),
              "role": "diagnosis", "ref": series.keyed_ref}], links))
        await record_table.add_diagnosis(node.store, record_table.Diagnosis(
            series.series_id, diagnosis, report, assertion.user, run_id, used, record.record_id,
            time.time()))
        await record_table.save_records(node.store, run_id or record.record_id, [record])
        assert node.audit is not None
        node.audit.append("diagnosis.record", f"{node.node_id[:16]}/{assertion.user}", "ok",
                          series.keyed_ref, record=record.record_id, digest=record.digest,
                          run=run_id, matches=len(used))
        return record

    async def _rank_record(self, run_id: str) -> ProvenanceRecord:
        for item in await record_table.load_records(self.node.store, run_id):
            record = ProvenanceRecord.from_dict(json.loads(item.body))
            if record.kind == "similarity.rank" and record.site == self.node.node_id:
                return record
        raise SimilarityError(f"this node has no similarity run {run_id[:32]!r}")

    # -- provenance --------------------------------------------------------------------
    async def verify_provenance(self, run_id: str | None = None) -> ProvenanceReport:
        node = self.node
        if node.audit is not None:
            # A running node signs its audit head once a second; sign it now so the
            # check covers every entry already written, not a head still to come.
            await asyncio.to_thread(node.audit.sync)
        stored = await record_table.load_records(node.store, run_id)
        return verify_stored(stored, self._key_for, own_node=node.node_id,
                             audit_path=node.cfg.audit_path, audit_key=node.identity.verify_key)

    def _key_for(self, node_id: str) -> bytes | None:
        node = self.node
        if node_id == node.node_id:
            return node.identity.verify_key
        member = node.membership.roster.member(node_id) if node.membership else None
        return member.verify_key if member is not None else None

    async def provenance_records(self, run_id: str | None = None) -> list[ProvenanceRecord]:
        return [ProvenanceRecord.from_dict(json.loads(item.body))
                for item in await record_table.load_records(self.node.store, run_id)]


__all__ = ["SimilarityAnswer", "SimilarityError", "SimilarityService", "VolumeUnavailable"]
