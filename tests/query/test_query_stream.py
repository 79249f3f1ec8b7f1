"""``POST /v1/query`` streams its answer from either store, and the asking node takes
only an answer that arrived whole (real nodes, mTLS peer API, SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.audit.log import AuditLog
from node.net.errors import PeerUnreachable
from node.node import Node
from node.policy import Level
from node.query.answer_wire import read_answer
from node.query.fanout import AnswerError
from node.query.model import FederatedQuery
from node.query.serve import BATCH_ROWS, QUERY_PATH
from node.query.serve_sql import run_query
from node.query.service import FederatedQueryService
from node.synth.metadata import fill_store
from node.testing.federation import LocalFederation, start_federation
from node.testing.users import local_user
from node.users import user_assertion
from tests.query_support import audit_entries, query_services, tune
from tests.store_backends import KINDS, store_url

CLINICIAN = {"role": "clinician", "department": "radiology", "purposes": ("treatment",)}


async def _federation(tmp_path: Path, url: str | None) -> LocalFederation:
    """Site a asks site b; b holds a metadata-only archive in the store under test."""
    def configure(cfg):  # type: ignore[no-untyped-def]
        cfg = tune({})(cfg)
        return dataclasses.replace(cfg, store_url=url) if cfg.name == "b" else cfg
    fed = await start_federation(tmp_path, ["a", "b"], services=query_services,
                                 configure=configure, bootstrap=False)
    await fill_store(fed.nodes[1].store, 15_000, seed=5)   # ~340 series
    return fed


async def _ask(node: Node, q: FederatedQuery):  # type: ignore[no-untyped-def]
    svc = node.service("federated-query")
    assert isinstance(svc, FederatedQueryService)
    user = local_user(node, "dr-stream", **CLINICIAN)  # type: ignore[arg-type]
    answer = await svc.query(q, user=user, purpose="treatment")
    return {a.site.name: a for a in answer.answers}


async def _local_rows(site: Node, q: FederatedQuery) -> tuple[list[dict[str, object]], bool]:
    assert site.membership is not None
    keys = site.membership.secrets
    got = await run_query(site.store, q, Level.DEIDENTIFIED, linkage_key=keys.linkage_key,
                          uid_key=keys.uid_key, threshold=0)
    return got.rows, got.truncated


@pytest.mark.parametrize("store_kind", KINDS)
async def test_a_large_answer_arrives_whole_in_batches(tmp_path: Path, store_kind: str,
                                                        request: pytest.FixtureRequest) -> None:
    fed = await _federation(tmp_path, store_url(store_kind, request))
    try:
        a, b = fed.nodes
        series = (await b.store.counts()).series
        assert series > BATCH_ROWS   # more than one batch on the wire
        whole = FederatedQuery(level="series", limit=1000)
        got = (await _ask(a, whole))["b"]
        assert (got.status, got.level, got.truncated) == ("ok", "deidentified", False)
        assert (got.rows, False) == await _local_rows(b, whole)
        assert len(got.rows) == series and got.counts["series"] == series

        cut = FederatedQuery(level="series", limit=BATCH_ROWS + 7)
        got = (await _ask(a, cut))["b"]
        assert got.status == "ok" and got.truncated and len(got.rows) == BATCH_ROWS + 7
        assert got.rows == (await _local_rows(b, cut))[0]
        served = [e for e in audit_entries(b) if e["outcome"] == "ok"]
        assert [e["detail"]["rows"] for e in served] == [series, BATCH_ROWS + 7]
    finally:
        await fed.stop()


async def test_a_reply_that_fails_part_way_is_refused_by_the_asker(
        tmp_path: Path) -> None:
    fed = await _federation(tmp_path, None)
    a, b = fed.nodes
    try:
        assert a.client is not None and a.membership is not None
        # b streams every row, then cannot write its audit entry (its log was closed):
        # the answer must not be taken (it ends without its digest, the connection closes)
        broken = AuditLog(tmp_path / "closed-audit.log")
        broken.close()
        kept, b.audit = b.audit, broken
        got = (await _ask(a, FederatedQuery(level="series", limit=1000)))["b"]
        assert got.status in ("unreachable", "error") and got.rows == []
        assert got.reason
        member = a.membership.roster.member(b.node_id)
        assert member is not None
        user = local_user(a, "dr-stream", **CLINICIAN)  # type: ignore[arg-type]
        body = {"query": {"level": "series", "limit": 1000},
                "assertion": user_assertion(a.identity, user, "treatment").to_dict()}
        received = bytearray()
        with pytest.raises(PeerUnreachable):
            async for chunk in a.client.stream(member, "POST", QUERY_PATH, body, timeout=30):
                received += chunk
        assert len(received) > 1000            # rows did arrive ...
        with pytest.raises(AnswerError):       # ... but never as an answer
            read_answer(bytes(received))
    finally:
        b.audit = kept
        await fed.stop()
