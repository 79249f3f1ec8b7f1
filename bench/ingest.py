"""Ingest / C-FIND / C-GET benchmark, medfed node vs Orthanc: ``python -m bench.ingest``.

Why: issues 3 and 15 set targets relative to Orthanc (ingest on 1 and 4 associations
>= 1.0x, C-FIND <= Orthanc's time - also with ``findscu --repeat``, so no process start
is measured - and C-GET / C-MOVE MB/s >= Orthanc's). Both servers get the same series,
the same dcmtk tools and TCP_NODELAY=1 in one invocation; only ratios are compared.
Options: --slices N (default 300), --rounds N (default 3, interleaved, medians),
--skip-orthanc (quick local run, no ratios), --series DIR (existing Part-10 files),
--no-write (leave RESULTS.md alone).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread
from rich.console import Console

from node.synth.generate import generate

from .figures import Rate, ServerFigures, compare_rounds, latency
from .ingest_report import RunInfo, markdown_section, rich_table
from .medfed_node import MOVE_DESTINATION, MedfedNode
from .orthanc import find_repeat_orthanc, run_baseline
from .results import load_average, stamp, write_section
from .scu import (BenchError, find_fresh_latencies, find_latencies, find_repeat_ms,
                  findscu_process_latencies, free_port, get_series,
                  move_series, store)

SECTION = "ingest"
FINDSCU_REPEATS = 200


@dataclass(frozen=True)
class Series:
    files: list[Path]
    nbytes: int
    study_uid: str
    series_uid: str
    patient_id: str


def load_series(folder: Path) -> Series:
    """The Part-10 files of exactly one series (C-GET fetches it back by its UID)."""
    files = sorted(folder.rglob("*.dcm"))
    if not files:
        raise BenchError(f"no .dcm files under {folder}")
    try:
        heads = [dcmread(p, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "PatientID"])
                 for p in files]
        uids = {(str(h.StudyInstanceUID), str(h.SeriesInstanceUID)) for h in heads}
    except Exception as exc:
        raise BenchError(f"cannot read the series under {folder}: {exc}") from exc
    if len(uids) != 1:
        raise BenchError(f"{folder} holds {len(uids)} series; the benchmark needs exactly one")
    (study_uid, series_uid), = uids
    return Series(files, sum(p.stat().st_size for p in files), study_uid, series_uid,
                  str(heads[0].PatientID))


def _ingest(work: Path, name: str, series: Series, senders: int,
            move_port: int = 0, receivers: int | None = None) -> tuple[Rate, MedfedNode]:
    """Store the series into a fresh node; the node is left running for the caller."""
    node = MedfedNode(work / name, move_port=move_port, receivers=receivers).start()
    try:
        seconds = store(node.target, series.files, senders)
        stored = node.stored_instances()
        if stored != len(series.files):
            raise BenchError(f"medfed stored {stored} of {len(series.files)} instances "
                             f"({senders} sender(s)); node output: {node.output_tail()}")
    except BaseException:
        node.stop()
        raise
    return Rate(seconds, len(series.files), series.nbytes), node


def measure_medfed(work: Path, series: Series, parallel: int, find_repeats: int,
                   console: Console, receivers: int | None = None) -> ServerFigures:
    console.log("medfed: storescu, 1 association (fresh node)")
    one, node = _ingest(work, "node-1", series, 1, receivers=receivers)
    node.stop()
    console.log(f"medfed: storescu x {parallel} parallel (fresh node)")
    move_port = free_port()
    many, node = _ingest(work, "node-n", series, parallel, move_port, receivers)
    try:
        console.log(f"medfed: C-FIND x {find_repeats}, findscu --repeat, C-GET, C-MOVE")
        samples, matches = find_latencies(node.target, series.patient_id, find_repeats)
        if matches < 1:
            raise BenchError("medfed's C-FIND found no study for the series' PatientID")
        per_query = find_repeat_ms(node.target, series.patient_id, FINDSCU_REPEATS)
        fresh = find_fresh_latencies(node.target, series.patient_id)
        process = findscu_process_latencies(node.target, series.patient_id, find_repeats)
        got = get_series(node.target, series.study_uid, series.series_uid, work / "get")
        moved = move_series(node.target, MOVE_DESTINATION, move_port, series.study_uid,
                            series.series_uid, work / "move")
        for what, rate in (("C-GET", got), ("C-MOVE", moved)):
            if rate.instances != len(series.files):
                raise BenchError(f"medfed's {what} delivered {rate.instances} of "
                                 f"{len(series.files)} instances")
    finally:
        node.stop()
    return ServerFigures(one, many, latency(samples), got, per_query, moved,
                         find_fresh=latency(fresh), find_process=latency(process))


def measure_orthanc(series_dir: Path, series: Series, args: argparse.Namespace,
                    console: Console) -> tuple[ServerFigures, str]:
    console.log("Orthanc: orthanc_baseline.sh on the same series")
    anchor = run_baseline(series_dir, parallel=args.parallel, find_repeats=args.find_repeats,
                          nbytes=series.nbytes)
    console.log("Orthanc: findscu --repeat on a private Orthanc")
    per_query = find_repeat_orthanc(series.files, series.patient_id, FINDSCU_REPEATS)
    return replace(anchor.figures, find_repeat_ms=per_query), anchor.version


def _rounds(series_dir: Path, series: Series, args: argparse.Namespace, work: Path,
            console: Console) -> tuple[list[ServerFigures], list[ServerFigures], str | None]:
    """Interleaved rounds; the order alternates so drift hurts neither side."""
    mine: list[ServerFigures] = []
    theirs: list[ServerFigures] = []
    version = None
    for n in range(args.rounds):
        console.rule(f"round {n + 1} of {args.rounds}")
        orthanc_first = n % 2 == 1 and not args.skip_orthanc
        if orthanc_first:
            figures, version = measure_orthanc(series_dir, series, args, console)
            theirs.append(figures)
        shutil.rmtree(work / "round", ignore_errors=True)
        mine.append(measure_medfed(work / "round", series, args.parallel,
                                   args.find_repeats, console, args.receivers))
        if not orthanc_first and not args.skip_orthanc:
            figures, version = measure_orthanc(series_dir, series, args, console)
            theirs.append(figures)
    return mine, theirs, version


def run(args: argparse.Namespace, console: Console) -> int:
    load = load_average()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        if args.series is not None:
            series_dir, generator = args.series, f"files from {args.series}"
        else:
            series_dir, generator = work / "series", "node.synth.generate, seed 1"
            console.log(f"generating a {args.slices}-slice 512x512 CT series")
            generate(series_dir, patients=1, studies=1, series=1, slices=args.slices,
                     rows=512, cols=512)
        series = load_series(series_dir)
        mine, theirs, version = _rounds(series_dir, series, args, work, console)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = compare_rounds(mine, theirs or None, args.parallel)
    info = RunInfo(len(series.files), series.nbytes, args.parallel, args.find_repeats,
                   args.rounds, version, generator, load)
    console.print(rich_table(rows, f"medfed vs Orthanc: {info.instances} instances, "
                                   f"{info.nbytes / 1e6:.1f} MB, median of {args.rounds} "
                                   "round(s)"))
    if not args.no_write:
        path = write_section(SECTION, markdown_section(stamp(), info, rows))
        console.log(f"wrote section '{SECTION}' of {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=300, help="slices of the synthetic series")
    p.add_argument("--series", type=Path, default=None,
                   help="use this folder of Part-10 files instead of generating one")
    p.add_argument("--parallel", type=int, default=4, help="parallel storescu senders")
    p.add_argument("--find-repeats", type=int, default=50)
    p.add_argument("--receivers", type=int, default=None,
                   help="the node's [dicom] receivers (default: the node's own default)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved medfed/Orthanc rounds; figures are medians")
    p.add_argument("--skip-orthanc", action="store_true",
                   help="measure medfed only (no ratios, no verdicts)")
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if min(args.slices, args.parallel, args.find_repeats, args.rounds) < 1:
        parser().error("--slices, --parallel, --find-repeats and --rounds must be at least 1")
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        return run(args, console)
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
