"""The simulator's similarity scenario: the planted copy is found, no pixels travel."""

from __future__ import annotations

from pathlib import Path

from sim.options import SimOptions
from sim.run import run_simulation


def test_similarity_scenario_finds_the_planted_copy_without_moving_pixels(tmp_path: Path) -> None:
    report = run_simulation(SimOptions("similarity", nodes=5, seed=3), tmp_path).report
    assert report["top1_is_planted"] is True
    assert report["image_bytes_sent"] == 0
    assert report["peer_kilobytes_crossed"] is True and report["peer_exchanges"] >= 1
    assert report["provenance_verified"] is True
    assert report["site_statuses"].get("ok", 0) == report["sites_asked"] >= 2
