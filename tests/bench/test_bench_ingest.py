"""The ingest benchmark: its arithmetic, its RESULTS.md sections, and short real runs
against a medfed node (subprocess) and a private Orthanc, with real dcmtk tools."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench.figures import (Latency, Rate, ServerFigures, compare, compare_rounds, latency,
                           median_figures, percentile)
from bench.ingest import load_series, main, measure_medfed
from bench.ingest_report import RunInfo, markdown_section
from bench.orthanc import figures_from_json, find_repeat_orthanc, run_baseline
from bench.results import replace_section, write_section
from bench.scu import BenchError, split
from node.synth.generate import generate

SLICES = 6


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("series")
    generate(out, patients=1, studies=1, series=1, slices=SLICES, rows=512, cols=512)
    return out


def _figures(ingest_s: float, find_ms: float, get_s: float, n: int = 10,
             nbytes: int = 5_000_000) -> ServerFigures:
    return ServerFigures(Rate(ingest_s, n, nbytes), Rate(ingest_s / 2, n, nbytes),
                         latency([find_ms] * 5), Rate(get_s, n, nbytes))


# ---------------------------------------------------------------- pure parts

def test_percentile_is_nearest_rank_like_the_anchor_script() -> None:
    samples = sorted(float(x) for x in range(1, 51))        # 1..50
    # the script: v[min(n-1, int(round(p/100*(n-1))))]
    assert percentile(samples, 50) == samples[int(round(0.5 * 49))]
    assert percentile(samples, 95) == samples[int(round(0.95 * 49))]
    assert percentile([3.0], 95) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_rates_and_verdicts_follow_the_issue_targets() -> None:
    mine = _figures(ingest_s=2.0, find_ms=3.0, get_s=1.0)
    theirs = _figures(ingest_s=1.0, find_ms=4.0, get_s=2.0)
    rows = {(r.measure, r.unit): r for r in compare(mine, theirs, parallel=4)}
    ingest = rows[("ingest, 1 association", "inst/s")]
    assert ingest.medfed == pytest.approx(5.0) and ingest.orthanc == pytest.approx(10.0)
    assert ingest.ratio == pytest.approx(0.5) and ingest.met is False
    find = rows[("C-FIND study level, p50", "ms")]
    assert find.ratio == pytest.approx(0.75) and find.met is True   # lower is better
    get = rows[("C-GET series", "MB/s")]
    assert get.ratio == pytest.approx(2.0) and get.met is True
    parallel = rows[("ingest, 4 parallel senders", "inst/s")]  # a target since issue 15
    assert parallel.ratio == pytest.approx(0.5) and parallel.met is False
    untargeted = rows[("ingest, 4 parallel senders", "MB/s")]
    assert untargeted.met is None


def test_the_per_query_association_and_process_latencies_are_lower_is_better_targets() -> None:
    mine = replace(_figures(1.0, 3.0, 1.0), find_fresh=latency([8.0] * 3),
                   find_process=latency([30.0] * 3))
    theirs = replace(_figures(1.0, 3.0, 1.0), find_fresh=latency([10.0] * 3),
                     find_process=latency([25.0] * 3))
    rows = {r.measure: r for r in compare(mine, theirs, parallel=4)}
    fresh = rows["C-FIND study level, new association per query (pynetdicom), p50"]
    assert fresh.ratio == pytest.approx(0.8) and fresh.met is True and fresh.target
    process = rows["C-FIND study level, one findscu process per query, p50"]
    assert process.ratio == pytest.approx(1.2) and process.met is False
    med = median_figures([mine, replace(mine, find_fresh=latency([20.0] * 3)), mine])
    assert med.find_fresh is not None and med.find_fresh.p50_ms == pytest.approx(8.0)
    assert median_figures([mine, _figures(1.0, 3.0, 1.0)]).find_fresh is None


def test_without_orthanc_there_are_no_ratios_or_verdicts() -> None:
    rows = compare(_figures(1.0, 2.0, 1.0), None, parallel=4)
    assert rows and all(r.orthanc is None and r.ratio is None and r.met is None for r in rows)


def test_medians_over_rounds_resist_one_slow_round() -> None:
    rounds = [_figures(1.0, 2.0, 1.0), _figures(9.0, 50.0, 9.0), _figures(1.2, 2.2, 1.1)]
    med = median_figures(rounds)
    assert med.ingest_1.seconds == pytest.approx(1.2)
    assert med.find.p50_ms == pytest.approx(2.2)
    assert med.get.seconds == pytest.approx(1.1)
    rows = compare_rounds(rounds, [_figures(1.0, 2.0, 1.0)] * 3, parallel=4)
    ingest = rows[0]
    assert len(ingest.round_ratios) == 3
    assert ingest.round_ratios[1] == pytest.approx(1 / 9)
    medfed_2, orthanc_2 = ingest.round_values[1]  # each round's own two figures
    assert medfed_2 / orthanc_2 == pytest.approx(ingest.round_ratios[1])
    info = RunInfo(10, 5_000_000, 4, 5, 3, "1.10.1", "test", "0.1 / 0.1 / 0.1")
    line = next(l for l in markdown_section("", info, rows).splitlines()
                if l.startswith(f"| {ingest.measure} | inst/s"))
    assert f"0.11x ({medfed_2:.2f} / {orthanc_2:.2f})" in line
    with pytest.raises(ValueError):
        median_figures([])


def test_split_is_round_robin_and_drops_empty_groups() -> None:
    files = [Path(f"f{i}") for i in range(5)]
    assert split(files, 2) == [[files[0], files[2], files[4]], [files[1], files[3]]]
    assert split(files[:2], 4) == [[files[0]], [files[1]]]


def test_sections_replace_only_their_own_text(tmp_path: Path) -> None:
    text = replace_section("", "ingest", "first")
    text = replace_section(text, "bundle", "codec table")
    text = replace_section(text, "ingest", "second run")
    assert text.startswith("# Benchmark results")
    assert "second run" in text and "first" not in text and "codec table" in text
    assert text.count("## ingest") == 1 and text.index("## ingest") < text.index("## bundle")
    path = write_section("ingest", "body", tmp_path / "RESULTS.md")
    assert "## ingest\n\nbody\n" in path.read_text()


def test_markdown_section_states_each_verdict() -> None:
    rows = compare(_figures(2.0, 3.0, 1.0), _figures(1.0, 4.0, 2.0), parallel=4)
    info = RunInfo(10, 5_000_000, 4, 5, 3, "1.10.1", "test", "0.1 / 0.1 / 0.1")
    body = markdown_section("- date: today\n", info, rows)
    table, _, verdicts = body.partition("Targets (issues 3 and 15):")
    assert verdicts.count("NOT MET") == 3 and verdicts.count(": MET") == 2
    assert "ingest, 1 association (inst/s): NOT MET" in verdicts
    assert "C-GET series (MB/s): MET" in verdicts
    assert "Orthanc 1.10.1" in table and "| measure |" in table


def test_anchor_json_is_checked_before_use() -> None:
    out = {"dataset": {"instances": 3, "MB": 1.5},
           "ingest_1assoc": {"seconds": 0.5, "instances": 3, "MB": 1.5, "stored": 3},
           "ingest_4parallel": {"seconds": 0.25, "instances": 3, "MB": 1.5, "stored": 3},
           "cget_series": {"seconds": 0.1, "instances": 3, "MB": 1.5},
           "find_pynetdicom_same_assoc_nodelay": {"n": 5, "p50_ms": 2.0, "p95_ms": 3.0,
                                                  "mean_ms": 2.2},
           "find_pynetdicom_fresh_assoc": {"n": 20, "p50_ms": 9.0, "p95_ms": 11.0,
                                           "mean_ms": 9.5},
           "find_study_latency": {"n": 50, "p50_ms": 30.0, "p95_ms": 40.0, "mean_ms": 31.0,
                                  "matches_last": 1}}
    fig = figures_from_json(out, parallel=4, nbytes=1_500_123)
    assert fig.ingest_1.nbytes == 1_500_123 and fig.ingest_1.inst_per_s == pytest.approx(6.0)
    assert fig.find == Latency(5, 2.0, 3.0, 2.2)
    assert fig.find_fresh == Latency(20, 9.0, 11.0, 9.5)
    assert fig.find_process == Latency(50, 30.0, 40.0, 31.0)
    out["ingest_4parallel"]["stored"] = 2
    with pytest.raises(BenchError, match="stored 2 of 3"):
        figures_from_json(out, parallel=4, nbytes=1)
    del out["find_pynetdicom_same_assoc_nodelay"]
    out["ingest_4parallel"]["stored"] = 3
    with pytest.raises(BenchError, match="pynetdicom"):
        figures_from_json(out, parallel=4, nbytes=1)


def test_python_m_bench_finds_benchmarks_by_their_main() -> None:
    names = bench_main.benchmark_names()
    assert names[0] == "ingest"
    assert bench_main.find_main("ingest") is main
    assert bench_main.find_main("figures") is None          # a helper, no main
    assert bench_main.find_main("no_such_benchmark") is None


# ---------------------------------------------------------------- bad input

def test_bad_options_and_empty_series_fail_cleanly(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--slices", "0", "--no-write"])
    assert exc.value.code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--series", str(empty), "--skip-orthanc", "--no-write"]) == 1
    assert "no .dcm files" in capsys.readouterr().out
    with pytest.raises(BenchError, match="no .dcm files"):
        load_series(empty)
    two = tmp_path / "two"
    generate(two, patients=1, studies=1, series=2, slices=2, rows=16, cols=16)
    with pytest.raises(BenchError, match="holds 2 series"):
        load_series(two)
    (empty / "broken.dcm").write_bytes(b"not dicom")
    with pytest.raises(BenchError, match="cannot read"):
        load_series(empty)


# ---------------------------------------------------------------- real runs

def test_medfed_side_on_a_real_node(series_dir: Path, tmp_path: Path) -> None:
    from rich.console import Console

    series = load_series(series_dir)
    fig = measure_medfed(tmp_path, series, parallel=2, find_repeats=3,
                         console=Console(quiet=True))
    assert fig.ingest_1.instances == SLICES and fig.ingest_1.inst_per_s > 0
    assert fig.ingest_n.instances == SLICES
    assert fig.find.n == 3 and 0 < fig.find.p50_ms <= fig.find.p95_ms
    assert fig.get.instances == SLICES
    assert fig.get.nbytes >= series.nbytes * 0.9   # getscu writes what it received
    assert fig.move is not None and fig.move.instances == SLICES  # storescp got them all
    assert fig.find_repeat_ms is not None and fig.find_repeat_ms >= 0  # a difference of two timings: 0 on a busy host


def test_orthanc_anchor_runs_on_the_same_series(series_dir: Path) -> None:
    series = load_series(series_dir)
    run = run_baseline(series_dir, parallel=2, find_repeats=3, nbytes=series.nbytes)
    assert run.version.startswith("1.")
    assert run.figures.ingest_1.instances == SLICES
    assert run.figures.get.instances == SLICES
    assert run.figures.find.n == 3
    assert run.figures.move is not None and run.figures.move.instances == SLICES
    assert find_repeat_orthanc(load_series(series_dir).files, series.patient_id, 5) >= 0  # ditto


def test_findscu_repeat_and_move_rows_are_targets() -> None:
    mine = replace(_figures(2.0, 3.0, 1.0), find_repeat_ms=1.0, move=Rate(1.0, 10, 5_000_000))
    theirs = replace(_figures(1.0, 4.0, 2.0), find_repeat_ms=2.0, move=Rate(2.0, 10, 5_000_000))
    rows = {(r.measure, r.unit): r for r in compare(mine, theirs, parallel=4)}
    repeat = rows[("C-FIND study level, findscu --repeat", "ms/query")]
    assert repeat.target and repeat.ratio == pytest.approx(0.5) and repeat.met is True
    move = rows[("C-MOVE series to storescp", "MB/s")]
    assert move.target and move.ratio == pytest.approx(2.0) and move.met is True
    medians = median_figures([mine, theirs, mine])
    assert medians.find_repeat_ms == pytest.approx(1.0) and medians.move is not None


def test_receivers_option_reaches_the_node_it_starts(tmp_path: Path) -> None:
    """`--receivers N` is written into the [dicom] table of the config `medfed init` made,
    and the node reads it back (the A/B of receiver counts depends on it)."""
    import tomllib

    from bench.medfed_node import MedfedNode

    node = MedfedNode(tmp_path / "n", receivers=3)
    node.config.parent.mkdir()
    node.config.write_text('[node]\nname = "x"\n\n[dicom]\nport = 0\n')
    node._set_receivers(3)
    assert tomllib.loads(node.config.read_text())["dicom"] == {"receivers": 3, "port": 0}
    node.config.write_text('[node]\nname = "x"\n')
    with pytest.raises(BenchError, match="no \\[dicom\\] table"):
        node._set_receivers(3)
