"""The pure parts of similarity search: methods, messages, policy, text, provenance, plug-ins."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from node.identity import NodeIdentity
from node.policy import PolicyError, policy_from_dict
from node.similar.embed import ProjectionMethod
from node.similar.hist import HistogramMethod
from node.similar.messages import MessageError, SimilarityRequest, build_request, verify_request
from node.similar.method import VolumeInput, block_mean
from node.similar.provenance import (ProvenanceError, ProvenanceRecord, new_record_id, now_iso,
                                     sign_record, verify_record)
from node.similar.registry import load_registry
from node.similar.reporttext import deidentify_text
from node.similar.scan import top_positions
from node.similar.sitepolicy import SimilarityPolicyError, similarity_policy


def _volume(seed: int, shape: tuple[int, ...] = (6, 40, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    blob = ((x - rng.uniform(-.4, .4)) ** 2 + (y - rng.uniform(-.4, .4)) ** 2 + z ** 2) < 0.4
    return np.where(blob, 60.0, -900.0) + rng.normal(0, 10, shape)


@pytest.mark.parametrize("method", [HistogramMethod(), ProjectionMethod()], ids=lambda m: m.id)
def test_methods_give_unit_vectors_that_rank_a_noisy_copy_first(method) -> None:  # type: ignore[no-untyped-def]
    case = _volume(1)
    vectors = [method.features(VolumeInput(v, "CT")) for v in
               [case + np.random.default_rng(9).normal(0, 2, case.shape), _volume(2), _volume(3)]]
    query = method.features(VolumeInput(case, "CT"))
    assert query.shape == (method.dim,) and query.dtype == np.float32
    assert abs(float(np.linalg.norm(query)) - 1.0) < 1e-5
    scores = method.score(query, np.stack(vectors))
    assert int(np.argmax(scores)) == 0 and scores[0] > 0.99
    one_slice = method.features(VolumeInput(case[:1], "MR"))
    assert one_slice.shape == (method.dim,) and np.all(np.isfinite(one_slice))


def test_block_mean_and_top_positions() -> None:
    data = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert block_mean(data, (2, 2)).tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert block_mean(np.ones((3, 5)), (8, 8, 8)).shape == (8, 8, 8)
    assert top_positions(np.array([0.1, 0.9, 0.5, 0.9]), 3).tolist() == [1, 3, 2]
    assert top_positions(np.zeros(0), 5).tolist() == []


def test_request_signature_covers_every_field() -> None:
    home, other = NodeIdentity.generate(), NodeIdentity.generate()
    request = build_request(home, method="hist", version="1", vector=np.ones(4), modality="CT",
                            body_part="HEART", top=5, exclude=("1.2.3",))
    parsed = SimilarityRequest.from_json(request.to_json())
    verify_request(parsed, home.node_id_hex, home.verify_key, now=time.time())
    for field, value in (("top", 6), ("modality", "MR"), ("exclude", [])):
        changed = SimilarityRequest.from_json({**request.to_json(), field: value})
        with pytest.raises(MessageError, match="does not verify"):
            verify_request(changed, home.node_id_hex, home.verify_key, now=time.time())
    with pytest.raises(MessageError, match="another site"):
        verify_request(parsed, other.node_id_hex, other.verify_key, now=time.time())
    with pytest.raises(MessageError, match="too old"):
        verify_request(parsed, home.node_id_hex, home.verify_key, now=time.time() + 3600)


@pytest.mark.parametrize("change, code", [
    ({"vector": "1,2"}, "bad_vector"), ({"vector": [True]}, "bad_vector"),
    ({"vector": [1.0] * 5000}, "bad_vector"), ({"top": 0}, "bad_request"),
    ({"modality": "ct"}, "bad_request"), ({"extra": 1}, "bad_request"),
    ({"method": "Bad Name"}, "unknown_method"), ({"exclude": ["x" * 80]}, "bad_request"),
])
def test_malformed_requests_name_the_field(change: dict, code: str) -> None:  # type: ignore[type-arg]
    request = build_request(NodeIdentity.generate(), method="hist", version="1",
                            vector=np.ones(4), modality=None, body_part=None, top=5)
    with pytest.raises(MessageError) as caught:
        SimilarityRequest.from_json({**request.to_json(), **change})
    assert caught.value.code == code


def test_site_policy_allowlist_and_release() -> None:
    policy = similarity_policy({"similarity_methods": ["hist", "embed@2"],
                                "similarity_release": "report"})
    assert policy.allows("hist", "7") and policy.allows("embed", "2")
    assert not policy.allows("embed", "1") and policy.releases_report
    assert similarity_policy({}).methods == () and not similarity_policy({}).releases_diagnosis
    with pytest.raises(SimilarityPolicyError):
        similarity_policy({"similarity_methods": "hist"})
    with pytest.raises(PolicyError, match="similarity_release"):
        policy_from_dict({"rule": [], "similarity_release": "everything"})


def test_report_text_loses_names_ids_and_dates() -> None:
    text = ("Mr DOE John (MRN 0012345, born 19600101) seen 01/02/2023; mail j.doe@x.org. "
            "Septal hypertrophy, no LGE.")
    out = deidentify_text(text, ["Doe^John", "0012345", "19600101"])
    for leaked in ("DOE", "John", "0012345", "19600101", "01/02/2023", "j.doe"):
        assert leaked not in out
    assert "Septal hypertrophy, no LGE." in out


def test_provenance_signature_detects_any_change() -> None:
    site = NodeIdentity.generate()
    record = sign_record(site, ProvenanceRecord(
        new_record_id(), "similarity.compute", "0" * 64, "site a", now_iso(), "u-1",
        {"id": "hist", "version": "1", "params": {"bins": 32}}, [{"digest": "ab"}],
        [{"ref": "1.2", "score": 0.9}]))
    keys = {site.node_id_hex: site.verify_key}
    verify_record(ProvenanceRecord.from_dict(record.to_dict()), keys.get)
    doc = record.to_dict()
    doc["outputs"][0]["score"] = 0.95
    with pytest.raises(ProvenanceError, match="does not verify"):
        verify_record(ProvenanceRecord.from_dict(doc), keys.get)
    with pytest.raises(ProvenanceError, match="not a known"):
        verify_record(record, {}.get)
    with pytest.raises(ProvenanceError, match="fields differ"):
        ProvenanceRecord.from_dict({**record.to_dict(), "extra": 1})


PLUGIN = '''
import numpy as np
class MeanMethod:
    id, version, dim = "mean", "0.1", 1
    def params(self): return {}
    def features(self, volume): return np.array([float(volume.voxels.mean())], dtype=np.float32)
    def score(self, query, candidates): return -abs(candidates[:, 0] - query[0])
'''


def test_sites_add_vetted_methods_through_entry_points(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site_methods.py").write_text(PLUGIN)
    info = tmp_path / "site_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: site-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[medfed.similarity_methods]\nmean = site_methods:MeanMethod\n"
        "broken = site_methods:Missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry()
    assert registry.ids() == ["embed", "hist", "mean"]
    assert registry.get("mean").version == "0.1"
    assert len(registry.problems) == 1 and registry.problems[0].startswith("broken:")
    sys.modules.pop("site_methods", None)
