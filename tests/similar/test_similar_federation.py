"""Similarity search over real nodes: mTLS peer API, SQLite, site policies, audit logs.

One federation of three sites for the module: "home" holds the clinician's case, "far"
holds a near-duplicate of it (planted) among its own series, "strict" allows only the
hist method. The traffic recorder sits on every node's peer client.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import pydicom

from node.deid.actions import keyed_uid
from node.net.assertion import issue_assertion
from node.net.errors import PeerRefused
from node.node import Node
from node.similar.messages import build_request
from node.similar.provjson import to_prov_json
from node.similar.scan import SIMILAR_PATH
from node.similar.service import SimilarityError, SimilarityService
from node.store.ingest_local import ingest_dataset
from node.synth.duplicate import near_duplicate
from node.synth.generate import iter_datasets
from node.synth.plan import PhiOverrides, SynthSpec
from node.testing.federation import LocalFederation, start_federation
from node.testing.traffic import TrafficRecorder, image_bytes, pixel_windows
from tests.query_support import audit_entries

pytestmark = pytest.mark.asyncio(loop_scope="module")

CANARY_NAME = "Zyxwvut^Canaryname"
CANARY_ID = "CANARY-PID-77421"


def _spec(site: int, phi: PhiOverrides | None = None) -> SynthSpec:
    return SynthSpec(patients=4, studies=1, series=1, slices=6, rows=32, cols=32, modality="CT",
                     seed=7, site_seed=site, phi=phi)


async def _ingest(node: Node, datasets: Any) -> None:
    for ds in datasets:
        await ingest_dataset(node.store, node.files, ds)


def _svc(node: Node) -> SimilarityService:
    svc = node.service("similarity")
    assert isinstance(svc, SimilarityService)
    return svc


def _assertion(node: Node, **over: Any) -> Any:
    who = dict(user="dr-heart", role="clinician", department="cardiology", purpose="treatment")
    return issue_assertion(node.identity, now=time.time(), **{**who, **over})


class World:
    def __init__(self, fed: LocalFederation, query_uid: str, dup_uid: str,
                 traffic: TrafficRecorder, windows: set[bytes]) -> None:
        self.fed, self.query_uid, self.dup_uid = fed, query_uid, dup_uid
        self.traffic, self.windows = traffic, windows

    @property
    def home(self) -> Node:
        return self.fed.by_name("home")

    @property
    def far(self) -> Node:
        return self.fed.by_name("far")

    @property
    def strict(self) -> Node:
        return self.fed.by_name("strict")

    def keyed(self, uid: str) -> str:
        return keyed_uid(uid, self.home.membership.secrets.uid_key)  # type: ignore[union-attr]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("similar")
    fed = await start_federation(tmp, ["home", "far", "strict"],
                                 services=lambda i, n: [SimilarityService(index=False)])
    try:
        strict = fed.by_name("strict")
        strict.cfg = replace(strict.cfg, policy={**strict.cfg.policy,
                                                 "similarity_methods": ["hist"]})
        home, far = fed.by_name("home"), fed.by_name("far")
        home_sets = list(iter_datasets(_spec(1)))
        await _ingest(home, home_sets)
        query_uid = str(home_sets[0].SeriesInstanceUID)
        case = [ds for ds in home_sets if ds.SeriesInstanceUID == query_uid]
        await _ingest(far, iter_datasets(_spec(2, PhiOverrides(patient_name=CANARY_NAME,
                                                               patient_id=CANARY_ID))))
        dup = list(near_duplicate(case, np.random.default_rng(3), sigma=2.0))
        await _ingest(far, dup)
        await _ingest(strict, iter_datasets(_spec(3)))
        for node in fed.nodes:
            await _svc(node).index_now()
        pixels = [bytes(ds.PixelData) for n in fed.nodes for ds in _stored(n)]
        traffic = TrafficRecorder()
        for node in fed.nodes:
            traffic.attach(node.client, node.cfg.name)
        yield World(fed, query_uid, str(dup[0].SeriesInstanceUID), traffic, pixel_windows(pixels))
    finally:
        await fed.stop()


def _stored(node: Node) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(node.cfg.objects_dir.rglob("*.dcm"))]


async def test_planted_near_duplicate_at_a_remote_site_ranks_first(world: World) -> None:
    world.traffic.clear()
    answer = await _svc(world.home).search(world.query_uid, _assertion(world.home),
                                           modality="CT", top=5)
    assert [(s.site.name, s.status) for s in answer.sites] == [
        ("far", "ok"), ("home", "ok"), ("strict", "ok")]
    first = answer.matches[0]
    assert (first.site, first.match.ref) == ("far", world.keyed(world.dup_uid))
    assert first.match.score > answer.matches[1].match.score
    assert world.keyed(world.query_uid) not in {m.match.ref for m in answer.matches}
    assert [m.rank for m in answer.matches] == [1, 2, 3, 4, 5]
    scanned = {s.site.name: s.counts["scanned"] for s in answer.sites}
    assert scanned == {"home": 4, "far": 5, "strict": 4}


async def test_no_image_bytes_leave_any_site_during_a_search(world: World) -> None:
    world.traffic.clear()
    await _svc(world.home).search(world.query_uid, _assertion(world.home), top=10)
    calls = [e for e in world.traffic.exchanges if e.path == SIMILAR_PATH]
    assert len(calls) == 2 and all(len(e.received) > 200 for e in calls)   # far and strict
    assert image_bytes(world.traffic.exchanges, world.windows) == 0
    # the detector is live: an exchange that carries one slice's pixels is counted
    from node.testing.traffic import Exchange
    leak = Exchange("far", "POST", SIMILAR_PATH,
                    received=bytearray(b'{"x":"' + bytes(_stored(world.far)[0].PixelData) + b'"}'))
    assert image_bytes([leak], world.windows) >= 32 * 32 * 2 - 64


async def test_a_site_whose_policy_disallows_the_method_answers_denied(world: World) -> None:
    before = len(audit_entries(world.strict, "similar.serve"))
    answer = await _svc(world.home).search(world.query_uid, _assertion(world.home),
                                           method_id="embed", top=3)
    status = {s.site.name: (s.status, s.reason) for s in answer.sites}
    assert status["strict"][0] == "denied" and "method_not_allowed" in status["strict"][1]
    assert status["far"][0] == "ok" and status["home"][0] == "ok"
    assert all(m.site != "strict" for m in answer.matches)
    entries = audit_entries(world.strict, "similar.serve")[before:]
    assert [(e["outcome"], e["detail"]["code"]) for e in entries] == [("denied", "method_not_allowed")]


async def test_provenance_verifies_exports_and_detects_tampering(world: World) -> None:
    svc = _svc(world.home)
    answer = await svc.search(world.query_uid, _assertion(world.home), top=3)
    record = await svc.record_diagnosis(world.query_uid, _assertion(world.home),
                                        diagnosis="hypertrophic cardiomyopathy",
                                        run_id=answer.run_id, match_ranks=(1, 2))
    assert [i["role"] for i in record.inputs] == ["case", "match", "match"]
    assert record.links == [{"record_id": answer.record.record_id, "digest": answer.record.digest}]
    report = await svc.verify_provenance(answer.run_id)
    assert report.ok and report.records == 5   # 3 sites + rank + diagnosis
    doc = json.loads(to_prov_json(await svc.provenance_records(answer.run_id)))
    assert f"medfed:activity-{answer.record.record_id}" in doc["activity"]
    assert any(f"medfed:site-{world.far.node_id}" == a for a in doc["agent"])
    rank = [e for e in audit_entries(world.home, "similar.rank")
            if e["detail"]["record"] == answer.record.record_id]
    assert rank and rank[0]["detail"]["digest"] == answer.record.digest

    far_record = answer.site_records[0].record_id
    db = sqlite3.connect(world.home.cfg.db_path)
    try:
        body = db.execute("SELECT body FROM similarity_provenance WHERE record_id=?",
                          (far_record,)).fetchone()[0]
        doc = json.loads(body)
        doc["outputs"][0]["score"] = 0.123
        db.execute("UPDATE similarity_provenance SET body=? WHERE record_id=?",
                   (json.dumps(doc), far_record))
        db.commit()
        tampered = await svc.verify_provenance(answer.run_id)
        assert not tampered.ok
        text = " ".join(tampered.problems)
        assert "signature does not verify" in text and far_record in text
        assert "has changed since it was linked" in text
    finally:
        db.execute("UPDATE similarity_provenance SET body=? WHERE record_id=?", (body, far_record))
        db.commit()
        db.close()
    assert (await svc.verify_provenance(answer.run_id)).ok


def _request_body(world: World, **over: Any) -> dict[str, Any]:
    home = world.home
    vector = over.pop("vector", np.full(544, 0.04, dtype=np.float32))
    request = build_request(home.identity, method=over.pop("method", "hist"), version="1",
                            vector=vector, modality=None, body_part=None, top=3)
    doc = request.to_json()
    doc.update(over)
    return {"request": doc, "assertion": _assertion(home).to_dict()}


async def _call(world: World, body: dict[str, Any]) -> PeerRefused:
    member = world.home.membership.roster.member(world.far.node_id)  # type: ignore[union-attr]
    with pytest.raises(PeerRefused) as caught:
        await world.home.client.call(member, "POST", SIMILAR_PATH, body, timeout=10)  # type: ignore[union-attr]
    return caught.value


@pytest.mark.parametrize("case, status, code", [
    ("forged", 403, "bad_signature"),
    ("short", 400, "bad_vector"),
    ("nan", 400, "bad_vector"),
    ("unknown", 400, "unknown_method"),
    ("huge", 413, "body_too_large"),
])
async def test_bad_requests_are_refused_with_4xx_and_audited(world: World, case: str, status: int,
                                                             code: str) -> None:
    if case == "forged":
        body = _request_body(world)
        body["request"]["vector"][0] = 0.5          # changed after signing
    elif case == "short":
        body = _request_body(world, vector=np.ones(100, dtype=np.float32))
    elif case == "nan":
        body = _request_body(world)
        body["request"]["vector"][3] = float("nan")
    elif case == "unknown":
        body = _request_body(world, method="deepnet")
    else:
        body = _request_body(world, vector=np.ones(4000, dtype=np.float32))
        body["request"]["vector"] = [0.123456789] * 40000
    before = audit_entries(world.far, "similar.serve") + audit_entries(world.far, "peer.request")
    refused = await _call(world, body)
    assert (refused.status, refused.code) == (status, code)
    after = audit_entries(world.far, "similar.serve") + audit_entries(world.far, "peer.request")
    new = [e for e in after if e not in before]
    assert new and {e["detail"]["code"] for e in new} == {code}
    assert {e["outcome"] for e in new} <= {"refused", "denied"}


async def test_no_phi_in_answers_and_diagnosis_text_is_deidentified(world: World) -> None:
    far = world.far
    row = far.store.writer.read_one("SELECT id FROM series WHERE series_uid != ? ORDER BY id LIMIT 1",
                                    (world.dup_uid,))
    # a clinician at "far" recorded a diagnosis that names the patient and a date
    series_uid = far.store.writer.read_one("SELECT series_uid FROM series WHERE id=?", (row[0],))[0]
    await _svc(far).record_diagnosis(series_uid, _assertion(far),
                                     diagnosis=f"Zyxwvut: old infarct seen 2021-03-04, MRN {CANARY_ID}")
    world.traffic.clear()
    answer = await _svc(world.home).search(world.query_uid, _assertion(world.home), top=20)
    texts = [m.match.diagnosis for m in answer.matches if m.site == "far" and m.match.diagnosis]
    assert texts == ["[removed]: old infarct seen [removed], MRN [removed]"]
    wire = b"".join(bytes(e.received) for e in world.traffic.exchanges)
    for canary in (b"Zyxwvut", b"Canaryname", CANARY_ID.encode(), b"2021-03-04"):
        assert canary not in wire


async def test_the_query_series_must_be_local(world: World) -> None:
    svc = _svc(world.home)
    with pytest.raises(SimilarityError, match="stored at this node"):
        await svc.search(f"{world.far.node_id}:{world.keyed(world.dup_uid)}", _assertion(world.home))
    with pytest.raises(SimilarityError, match="no series"):
        await svc.search("1.2.3.4", _assertion(world.home))
