"""The description oracle: a requester that may see only counts or de-identified rows must
not learn a study description by watching which description filters match. The serving
site applies free-text filters only at the identified level and audits which filters
(names, never values) a query used."""

from __future__ import annotations

from pathlib import Path

from node.query.model import FederatedQuery
from node.synth.generate import PhiOverrides
from tests.query.test_query_federation import _service
from tests.query_support import audit_entries, federation

RESEARCHER = dict(user="res-1", role="researcher", department="oncology", purpose="research")
CLINICIAN = dict(user="dr-who", role="clinician", department="radiology", purpose="treatment")
SECRET = "ZEBRA STUDY {i}"
POLICIES = {
    "b": {"small_count_threshold": 1, "rule": [
        {"name": "a's clinicians", "site": ["a"], "role": "clinician", "purpose": "treatment",
         "level": "identified"},
        {"name": "researchers", "site": "*", "role": "researcher", "purpose": "research",
         "level": "deidentified"},
        {"name": "others count", "site": "*", "level": "count"}]},
}


def _b_answer(answer) -> tuple[str, str, int, dict]:  # type: ignore[no-untyped-def]
    site = next(s for s in answer.sites if s.site == "b")
    counts = next(a.counts for a in answer.answers if a.site.name == "b")
    return site.status, site.reason, site.rows, counts


async def test_a_deidentified_or_count_requester_cannot_spell_out_a_description(
        tmp_path: Path) -> None:
    fed, _data = await federation(tmp_path, ["a", "b"], policies=POLICIES,
                                  phi={1: PhiOverrides(study_description=SECRET)})
    try:
        svc = _service(fed.nodes[0])
        # the identified requester's filter works: the oracle would be real without the rule
        hit = await svc.query(FederatedQuery(description="ZEBRA"), **CLINICIAN)
        miss = await svc.query(FederatedQuery(description="ZEBRB"), **CLINICIAN)
        assert _b_answer(hit)[0] == "ok" and _b_answer(hit)[2] > 0
        assert _b_answer(miss)[0] == "ok" and _b_answer(miss)[2] == 0

        for who in (RESEARCHER, dict(RESEARCHER, user="res-2", purpose="operations")):  # deid, count
            answers = {}
            for guess in ("Z", "ZE", "ZEB", "ZEBR", "ZEBRA", "A", "ZA", "ZEBRB"):
                answer = await svc.query(FederatedQuery(description=guess), **who)
                status, reason, rows, counts = _b_answer(answer)
                answers[guess] = (status, rows, counts)
                assert status == "denied" and "free_text_not_allowed" in reason, (who, reason)
            assert len(set(map(repr, answers.values()))) == 1, "every guess looks the same"
            plain = await svc.query(FederatedQuery(), **who)
            assert _b_answer(plain)[0] == "ok"  # without the free-text filter it answers

        served = audit_entries(fed.nodes[1])
        refused = [e for e in served if e["detail"].get("code") == "free_text_not_allowed"]
        assert len(refused) >= 16   # a hedged request (slow host) is audited too
        assert all(e["detail"]["filters"] == "description" for e in refused)
        assert {e["detail"]["rule"] for e in refused} == {"researchers", "others count"}
        assert not any("ZEB" in str(e) for e in served), "filter values stay out of the log"
        ok = [e for e in served if e["outcome"] == "ok" and e["detail"]["filters"]]
        assert ok and all(e["detail"]["filters"] == "description" for e in ok)
    finally:
        await fed.stop()
