"""Small-N versions of every scenario, in virtual time, asserting the promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path


_CHILD = """
import json, sys
from pathlib import Path
from sim.options import SimOptions
from sim.run import run_simulation
args = json.loads(sys.argv[1])
report = run_simulation(SimOptions(args.pop("scenario"), **args.pop("kw")), Path(args.pop("dir"))).report
print(json.dumps(report))
"""


def _run(tmp_path: Path, scenario: str, **kw: object) -> dict:
    """Each scenario in a fresh interpreter, as `medfed sim` runs: a run must not depend
    on what an earlier simulation left in the process (two scenarios failed ~1 in 3 only
    after another scenario had run in the same process)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    arg = json.dumps({"scenario": scenario, "kw": kw, "dir": str(tmp_path)})
    done = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                          timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_lookup_finds_every_record_within_the_hop_target(tmp_path: Path) -> None:
    report = _run(tmp_path, "lookup", nodes=32, seed=14, queries=20, down=0.25)
    assert report["dht"]["lookup_success"] == 1.0
    assert report["dht"]["mean_hops"] <= math.log2(32) / 2 + 1
    assert [s["nodes"] for s in report["stages"]] == [8, 16, 32]
    assert all(s["lookup_success"] == 1.0 for s in report["stages"])
    assert report["nodes_down"] == 8 and report["dht_with_down"]["lookup_success"] == 1.0


def test_query_recall_is_complete_without_faults_and_counts_down_sites(tmp_path: Path) -> None:
    report = _run(tmp_path / "a", "query", nodes=7, seed=11, queries=10)
    assert report["recall"] == 1.0 and report["nodes_down"] == 0
    assert report["site_statuses"].keys() == {"ok"}
    assert 1 <= report["sites_asked_mean"] < 7          # the DHT narrowed the fan-out
    down = _run(tmp_path / "b", "query", nodes=8, seed=12, queries=6, down=0.25)
    assert down["nodes_down"] == 2 and down["recall"] == 1.0
    assert down["down_site_statuses"].keys() == {"unreachable"}


def test_cold_start_queries_run_over_the_prewarmed_connections(tmp_path: Path) -> None:
    """New connections cost TCP + TLS (2 round trips, the default). The nodes' keepers
    open them at start, so the queries open none; without keepers, the queries do."""
    warm = _run(tmp_path / "a", "query", nodes=7, seed=11, queries=8)
    cold = _run(tmp_path / "b", "query", nodes=7, seed=11, queries=8, warm_peers=0)
    assert warm["params"]["handshake_rtts"] == 2 and warm["recall"] == cold["recall"] == 1.0
    assert warm["peer_handshakes_during_queries"] == 0
    assert cold["peer_handshakes_during_queries"] >= 5   # first contact with each site asked


def test_sharing_survives_owners_down_without_leaking_phi(tmp_path: Path) -> None:
    report = _run(tmp_path, "sharing", nodes=8, seed=15)
    assert report["nodes_down"] == 2 and report["bundles"] == report["series_planted"] == 4
    assert report["retrievals"] == 4 and report["retrieval_success"] == 1.0
    assert report["canary_files_at_owners"] > 0      # the scan does find planted PHI …
    assert report["phi_canary_hits"] == 0            # … and none of it left its site
    assert report["tamper_detected"] is True


def test_durability_loses_nothing_within_the_promise_and_repair_moves_bytes(tmp_path: Path
                                                                           ) -> None:
    """One of 10 nodes gone for good: fewer than r replica holders and fewer than
    n - k + 1 share holders lost, whatever the placement — every bundle comes back."""
    within = _run(tmp_path / "a", "durability", nodes=10, seed=16, down=0.1, repair=False)
    assert within["killed"] == 1 and within["bundles"] == 4
    assert within["killed"] < within["r"] and within["killed"] < within["n"] - within["k"] + 1
    assert within["bundles_recoverable"] == within["predicted_recoverable"] == 1.0
    assert within["repair_bytes"] == 0
    repaired = _run(tmp_path / "b", "durability", nodes=10, seed=16, down=0.3, repair=True)
    assert repaired["killed"] == 3 and repaired["repair_bytes"] > 0
    assert repaired["bundles_recoverable"] >= repaired["predicted_recoverable"]


def test_adversary_gets_no_forged_record_accepted_and_no_decryption(tmp_path: Path) -> None:
    report = _run(tmp_path, "adversary", nodes=12, seed=17)
    assert report["forged_records_sent"] > 0 and report["forged_records_accepted"] == 0
    assert report["forged_stores_rejected"] > 0
    assert report["lookup_success_despite_byzantine"] == 1.0
    assert report["replayed_datagrams"] > 0 and report["replays_accepted"] == 0
    assert report["collusion_attempts"] > 0 and report["colluder_decryptions"] == 0
    assert report["control_decryptions_with_k_shares"] == report["bundles"] > 0


def test_churn_keeps_recall_of_live_sites_over_simulated_hours(tmp_path: Path) -> None:
    report = _run(tmp_path, "churn", nodes=10, seed=18, queries=12, churn_per_hour=0.6,
                  duration_s=2 * 3600.0, session_mean_s=1200.0)
    assert report["departures"] >= 3 and report["returns"] >= 1
    assert report["recall"] == 1.0 and report["queries_complete"] == 1.0
    assert report["dht"]["lookup_success"] == 1.0
    broadcast = round((1 - report["dht_planned"]) * report["queries"])
    assert sum(report["dht_fallbacks"].values()) == broadcast   # every fallback has a reason
    assert [p[0] for p in report["series"]["recall_over_time"]] == sorted(
        p[0] for p in report["series"]["recall_over_time"])


def test_churn_reports_why_queries_were_broadcast(tmp_path: Path) -> None:
    """``--broadcast`` in the churn scenario, as in the query scenario: every query asks
    every member, and ``dht_fallbacks`` names the planner's reason for each."""
    report = _run(tmp_path, "churn", nodes=6, seed=18, queries=4, churn_per_hour=0.5,
                  duration_s=1800.0, session_mean_s=600.0, broadcast=True)
    assert report["dht_planned"] == 0.0
    assert report["dht_fallbacks"] == {"broadcast requested": 4}
    assert report["recall"] == 1.0


def test_revocation_reaches_every_member_and_the_site_is_refused(tmp_path: Path) -> None:
    report = _run(tmp_path, "revocation", nodes=10, seed=19)
    assert report["members"] == 9 and report["members_refusing"] == 9
    assert report["all_refuse"] is True and 0 < report["all_refuse_s"] < 60   # README bound
    assert report["refused"] == report["refusal_checks"] == 3 and report["accepted"] == 0
    assert report["revoked_site_knows"] is True
