"""Federated query over real nodes (mTLS peer API, SQLite, policies, audit logs)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from node.net.assertion import issue_assertion
from node.net.errors import PeerRefused
from node.net.server import PeerRequest
from node.node import Node
from node.query.model import FederatedQuery
from node.query.serve import QUERY_PATH, stream_answer
from node.query.service import FederatedQueryService
from node.synth.generate import PhiOverrides
from node.testing.users import local_user
from tests.query_support import DENY_ALL, audit_entries, federation, patient_id

CLINICIAN = dict(user="dr-who", role="clinician", department="radiology", purpose="treatment")
RESEARCHER = dict(user="res-1", role="researcher", department="oncology", purpose="research")


class _Asker:
    """The node's query service, asked for a local user made from a CLINICIAN-like dict."""

    def __init__(self, node: Node) -> None:
        svc = node.service("federated-query")
        assert isinstance(svc, FederatedQueryService)
        self.node, self.svc = node, svc

    def _who(self, who: dict[str, str]) -> dict[str, Any]:
        user = local_user(self.node, who["user"], role=who["role"], department=who["department"],
                          purposes=(who["purpose"],))
        return {"user": user, "purpose": who["purpose"]}

    def query(self, q: FederatedQuery, **who: str) -> Any:
        return self.svc.query(q, **self._who(who))

    def stream(self, q: FederatedQuery, **who: str) -> Any:
        return self.svc.stream(q, **self._who(who))


def _service(node: Node) -> _Asker:
    return _Asker(node)


def _body(asker: Node, query: dict[str, Any], who: dict[str, str] = CLINICIAN,
          now: float | None = None, ttl_s: int = 300) -> dict[str, Any]:
    assertion = issue_assertion(asker.identity, now=time.time() if now is None else now,
                                ttl_s=ttl_s, **who)
    return {"query": query, "assertion": assertion.to_dict()}


async def _raw(asker: Node, server: Node, body: dict[str, Any]) -> bytes:
    """The answer bytes exactly as they arrive at the asking node."""
    assert asker.client is not None and asker.membership is not None
    member = asker.membership.roster.member(server.node_id)
    assert member is not None
    return b"".join([c async for c in asker.client.stream(member, "POST", QUERY_PATH, body,
                                                           timeout=10)])


async def test_one_query_merges_all_sites_and_dedupes_shared_patients(tmp_path: Path) -> None:
    fed, data = await federation(tmp_path, ["a", "b", "c", "d"])
    try:
        answer = await _service(fed.nodes[0]).query(FederatedQuery(), **CLINICIAN)
        assert [(s.site, s.status, s.level) for s in answer.sites] == [
            (n, "ok", "deidentified") for n in "abcd"]
        expected = {psn: sorted(name for name, d in zip("abcd", data) if psn in d.pseudonyms)
                    for d in data for psn in d.pseudonyms}
        assert {p.pseudonym: p.sites for p in answer.patients} == expected
        assert sum(len(s) == 3 for s in expected.values()) == 3  # patients 4, 5 and 6
        studies = {uid for d in data for uid in d.keyed_studies}
        assert {r["study_uid"] for p in answer.patients for r in p.records} == studies
        assert answer.counts["patients"].display() == str(sum(len(d.pseudonyms) for d in data))
        assert answer.elapsed_ms < 15_000   # within the deadline

        by_id = await _service(fed.nodes[1]).query(FederatedQuery(patient_id=patient_id(4)),
                                                    **CLINICIAN)
        assert [(p.sites, len(p.records)) for p in by_id.patients] == [(["a", "b", "c"], 3)]
        assert all(s.status == "ok" for s in by_id.sites)
    finally:
        await fed.stop()


async def test_filters_and_levels_match_what_was_stored(tmp_path: Path) -> None:
    fed, data = await federation(tmp_path, ["a", "b", "c"])
    try:
        svc = _service(fed.nodes[2])
        chest = await svc.query(FederatedQuery(body_part="CHEST"), **CLINICIAN)
        want = {uid for d in data for uid, part in d.keyed_studies.items() if part == "CHEST"}
        assert want and {r["study_uid"] for p in chest.patients for r in p.records} == want
        series = await svc.query(FederatedQuery(level="series", limit=3), **CLINICIAN)
        for site in series.answers:
            assert len(site.rows) == 3 and site.truncated
            assert all(r["series_uid"].startswith("2.25.") and r["instances"] == 1
                       for r in site.rows)
        patients = await svc.query(FederatedQuery(level="patient"), **CLINICIAN)
        assert {p.pseudonym for p in patients.patients} == set().union(
            *(d.pseudonyms for d in data))
        # patient level: one record per site that holds the patient (its own study count)
        assert all(sorted(r["site"] for r in p.records) == p.sites and
                   all(r["studies"] == 1 for r in p.records) for p in patients.patients)
        got = [a async for a in svc.stream(FederatedQuery(modality="MR"), **CLINICIAN)]
        assert sorted(a.site.name for a in got) == ["a", "b", "c"]
        assert all(a.status == "ok" and a.rows == [] for a in got)  # synthetic data is CT
    finally:
        await fed.stop()


def _policies() -> dict[str, dict[str, Any]]:
    return {
        "b": {"small_count_threshold": 5, "rule": [
            {"name": "a's clinicians", "site": ["a"], "role": "clinician",
             "purpose": "treatment", "level": "identified"},
            {"name": "research counts", "site": "*", "role": "researcher", "level": "count"}]},
        "c": {"rule": [{"name": "clinicians", "site": "*", "role": "clinician",
                        "level": "deidentified"}]},
        "d": DENY_ALL,
    }


async def test_each_site_answers_under_its_own_policy(tmp_path: Path) -> None:
    fed, data = await federation(tmp_path, ["a", "b", "c", "d"], policies=_policies())
    try:
        svc = _service(fed.nodes[0])
        clin = await svc.query(FederatedQuery(), **CLINICIAN)
        assert [(s.site, s.status, s.level) for s in clin.sites] == [
            ("a", "ok", "deidentified"), ("b", "ok", "identified"),
            ("c", "ok", "deidentified"), ("d", "denied", "")]
        assert "default deny" in clin.sites[3].reason
        rows = {a.site.name: a.rows for a in clin.answers}
        assert all(r["patient_id"].startswith("MRN") and r["patient_name"] for r in rows["b"])
        assert all("patient_id" not in r and "patient_name" not in r for r in rows["c"])

        res = await svc.query(FederatedQuery(), **RESEARCHER)
        assert [(s.site, s.status, s.level) for s in res.sites] == [
            ("a", "ok", "deidentified"), ("b", "ok", "count"),
            ("c", "denied", ""), ("d", "denied", "")]
        b_counts = res.answers[1].counts
        assert b_counts == {"patients": "<5", "studies": "<5", "series": 8}
        assert res.answers[1].rows == []
        known = len(data[0].pseudonyms)
        assert res.counts["patients"].display() == f">= {known + 1}"

        name = next(iter(r["patient_name"] for r in rows["b"]))
        by_name = await svc.query(FederatedQuery(patient_name=name.split("^")[0] + "*"),
                                  **CLINICIAN)
        status = {s.site: (s.status, s.reason) for s in by_name.sites}
        assert status["b"][0] == "ok" and by_name.answers[1].rows
        assert status["c"][0] == "denied" and "name_search_not_allowed" in status["c"][1]

        # another site asking b as a clinician gets no PHI: the rule names site a only
        other = await _service(fed.nodes[2]).query(FederatedQuery(), **CLINICIAN)
        assert {s.site: s.status for s in other.sites}["b"] == "denied"

        denied = audit_entries(fed.nodes[3])
        assert len(denied) >= 3 and all(e["outcome"] == "denied" for e in denied)
        handle = fed.nodes[0].users.get("dr-who").handle   # sites see the handle, not the name
        assert denied[0]["actor"] == f"{fed.nodes[0].node_id[:16]}/{handle}"
        assert denied[0]["detail"]["code"] == "policy_denied"
        served = audit_entries(fed.nodes[1])
        assert [e["detail"]["level"] for e in served if e["outcome"] == "ok"][:2] == [
            "identified", "count"]
        assert served[0]["detail"]["rows"] == len(rows["b"])
    finally:
        await fed.stop()


async def test_deidentified_answer_carries_no_phi(tmp_path: Path) -> None:
    canaries = PhiOverrides(patient_name="CANARY^NAME{i}", patient_id="CANPID{i}",
                            birth_date="1901010{i}", accession="CANACC{i}S{s}",
                            study_description="CANARY DESCRIPTION {i}",
                            institution="CANARY INSTITUTE")
    policies = {"b": {"rule": [
        {"name": "a's clinicians", "site": ["a"], "role": "clinician", "purpose": "treatment",
         "level": "identified"},
        {"name": "researchers", "site": "*", "role": "researcher", "level": "deidentified"}]}}
    fed, data = await federation(tmp_path, ["a", "b"], policies=policies, phi={1: canaries})
    try:
        a, b = fed.nodes
        phi = {v for v in data[1].phi if v} | {"CANARY", "CANPID", "CANACC"}
        for level in ("patient", "study", "series"):
            raw = await _raw(a, b, _body(a, {"level": level}, RESEARCHER))
            assert b'"level":"deidentified"' in raw.replace(b" ", b"")
            leaked = [v for v in phi if v.encode() in raw]
            assert leaked == [], f"PHI in a {level}-level de-identified answer: {leaked}"
        raw = await _raw(a, b, _body(a, {"level": "study"}, CLINICIAN))
        assert b"CANARY^NAME" in raw and b"CANPID" in raw and b"CANACC" in raw  # the scan works
    finally:
        await fed.stop()


class _StuckQueries:
    """Serves /v1/query on a site so that the first ``stuck`` requests hang."""

    name = "stuck-query"

    def __init__(self, stuck: int) -> None:
        self.stuck = stuck
        self.calls = 0
        self.node: Node | None = None

    def register_routes(self, node: Node) -> None:
        self.node = node

        async def handle(call: PeerRequest) -> web.StreamResponse:
            self.calls += 1
            if self.calls <= self.stuck:
                await asyncio.sleep(60)
            return await stream_answer(node, call, deadline_s=30)

        assert node.peer is not None
        node.peer.add_route("POST", QUERY_PATH, handle)

    async def start(self, node: Node) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.mark.parametrize("stuck", [2, 1])
async def test_deadline_and_hedging_with_a_hanging_peer(tmp_path: Path, stuck: int) -> None:
    slow = _StuckQueries(stuck)
    services = lambda i, name: [slow] if name == "c" else [FederatedQueryService()]
    deadline = 6.0   # long enough that a loaded host answers a hedge well within it
    fed, _ = await federation(tmp_path, ["a", "b", "c"], services=services,
                              deadline_s=deadline, hedge_after_s=0.3)
    try:
        start = time.monotonic()
        answer = await _service(fed.nodes[0]).query(FederatedQuery(), **CLINICIAN)
        elapsed = time.monotonic() - start
        status = {s.site: s for s in answer.sites}
        assert status["a"].status == status["b"].status == "ok"
        assert slow.calls == 2  # the hedge went out (a freshly signed request)
        if stuck == 2:
            assert status["c"].status == "timeout" and "deadline" in status["c"].reason
            assert deadline <= elapsed < deadline + 30  # the deadline (slack: a loaded host)
        else:
            assert status["c"].status == "ok" and status["c"].hedged
            assert 300 <= status["c"].latency_ms < deadline * 1000 and elapsed < deadline
            assert status["c"].rows > 0
    finally:
        await fed.stop()


async def test_down_peer_is_reported_unreachable(tmp_path: Path) -> None:
    fed, data = await federation(tmp_path, ["a", "b", "c"])
    try:
        await fed.nodes[2].stop()
        fed.down.add(2)
        answer = await _service(fed.nodes[0]).query(FederatedQuery(), **CLINICIAN)
        assert [(s.site, s.status) for s in answer.sites] == [
            ("a", "ok"), ("b", "ok"), ("c", "unreachable")]
        assert {p.pseudonym for p in answer.patients} == data[0].pseudonyms | data[1].pseudonyms
    finally:
        await fed.stop()


async def test_forged_expired_and_misplaced_assertions_are_refused_and_audited(
        tmp_path: Path) -> None:
    fed, _ = await federation(tmp_path, ["a", "b", "c"])
    try:
        a, b, c = fed.nodes
        forged = _body(a, {})
        forged["assertion"]["role"] = "admin"   # claims changed after signing
        expired = _body(a, {}, now=time.time() - 4000)
        stolen = _body(c, {})                   # c's assertion presented by a
        cases = [(forged, "assertion_bad_signature"), (expired, "assertion_expired"),
                 (stolen, "assertion_wrong_site"), ({"query": {}}, "missing_assertion"),
                 (_body(a, {"patient_id": "MRN0000001"}), "plain_patient_id"),
                 (_body(a, {"level": "image"}), "bad_query")]
        for body, code in cases:
            with pytest.raises(PeerRefused) as refused:
                await _raw(a, b, body)
            assert refused.value.code == code
            assert refused.value.status == (400 if code in ("plain_patient_id", "bad_query")
                                            else 403)
        entries = audit_entries(b)
        assert [e["detail"]["code"] for e in entries] == [code for _, code in cases]
        assert all(e["outcome"] in ("denied", "refused") for e in entries)
        assert all(e["actor"].startswith(a.node_id[:16]) for e in entries)
    finally:
        await fed.stop()
