"""How the ingest benchmark shows its figures: a rich table and a Markdown section (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rich.table import Table

from .figures import Comparison


@dataclass(frozen=True)
class RunInfo:
    """What a reader needs to judge the figures: data, tools, settings."""

    instances: int
    nbytes: int
    parallel: int
    find_repeats: int
    rounds: int
    orthanc_version: str | None  # None: Orthanc was skipped
    generator: str
    load_at_start: str


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _ratio(row: Comparison) -> str:
    return "-" if row.ratio is None else f"{row.ratio:.2f}x"


def _rounds(row: Comparison) -> str:
    """Each round's ratio, and for the ingest rows its two figures (medfed / Orthanc)."""
    if row.unit == "inst/s" and row.measure.startswith("ingest") \
            and len(row.round_values) == len(row.round_ratios):
        return ", ".join(f"{r:.2f}x ({_num(m)} / {_num(o)})"
                         for r, (m, o) in zip(row.round_ratios, row.round_values)) or "-"
    return ", ".join(f"{r:.2f}x" for r in row.round_ratios) or "-"


def _verdict(row: Comparison) -> str:
    if not row.target:
        return ""
    wanted = ">= 1.0x" if row.better == "higher" else "<= 1.0x"
    if row.met is None:
        return f"target {wanted} (no anchor)"
    return f"{'MET' if row.met else 'NOT MET'} (target {wanted})"


def rich_table(rows: Sequence[Comparison], title: str) -> Table:
    table = Table(title=title)
    for col, justify in (("measure", "left"), ("unit", "left"), ("medfed", "right"),
                         ("Orthanc", "right"), ("medfed / Orthanc", "right"),
                         ("per round", "right"), ("target", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        verdict = _verdict(row)
        style = "green" if row.met else ("red" if row.met is False else "")
        table.add_row(row.measure, row.unit, _num(row.medfed), _num(row.orthanc),
                      _ratio(row), _rounds(row),
                      f"[{style}]{verdict}[/{style}]" if style else verdict)
    return table


def markdown_table(rows: Sequence[Comparison]) -> str:
    lines = ["| measure | unit | medfed | Orthanc | medfed / Orthanc | per round | target |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row.measure} | {row.unit} | {_num(row.medfed)} | "
                     f"{_num(row.orthanc)} | {_ratio(row)} | {_rounds(row)} | "
                     f"{_verdict(row)} |")
    return "\n".join(lines)


def markdown_section(stamp: str, info: RunInfo, rows: Sequence[Comparison]) -> str:
    """The body of the `## ingest` section of RESULTS.md."""
    anchor = (f"Orthanc {info.orthanc_version} via /work/shared/bench/orthanc_baseline.sh, "
              "same series, same run" if info.orthanc_version else
              "Orthanc skipped (--skip-orthanc): no ratios, no verdicts")
    setup = (
        f"- load average when the benchmark started (1/5/15 min): {info.load_at_start}\n"
        f"- rounds: {info.rounds}, medfed and Orthanc interleaved (order alternates); "
        "figures are per-measure medians over the rounds, 'per round' lists each "
        "round's ratio\n"
        f"- series: {info.instances} CT slices 512x512 16-bit, {info.nbytes / 1e6:.1f} MB "
        f"({info.generator})\n"
        f"- anchor: {anchor}\n"
        "- clients: dcmtk `/usr/bin/storescu` (1 association; and "
        f"{info.parallel} parallel senders, files split round-robin), `/usr/bin/getscu` "
        "(series level, into a temp folder); C-FIND study level by PatientID from "
        f"pynetdicom, {info.find_repeats}x on one open association with TCP_NODELAY on "
        "the SCU socket; the same query from pynetdicom with a new association each time "
        "(20x: associate, C-FIND, release); one dcmtk `findscu` process per query "
        f"({info.find_repeats}x, the anchor script's own C-FIND latency and keys); and "
        "dcmtk `findscu --repeat 200` (time of 200 minus time of 1, "
        "over 199: no process start, no association set-up; Orthanc: a private one "
        "loaded with the same series); `/usr/bin/movescu` series level to a dcmtk "
        "`storescp` (Orthanc: the baseline script's C-MOVE); `TCP_NODELAY=1` in the "
        "environment of every dcmtk tool and of Orthanc\n"
        "- medfed: `medfed init` + `medfed run` in its own process, `[dicom] receivers` "
        "at its default (one receiver process per CPU core up to 4: 2 here): the first "
        "storage association at a time is served by the node process, those beside it by "
        "the receivers (4 senders: 1 + 2 + 1), whose rows, claims and audit entries the "
        "node process commits; durability \"full\": "
        "before each success status the instance's bytes are in an ingest journal (the "
        "node's or the receiver's own), "
        "flushed with one fdatasync that the associations of one process share (file and "
        "SQLite rows follow without flushes; checkpointed in batches; replayed after a "
        "crash or power cut); a fresh node for each ingest run, whose journals were "
        "prepared before its DICOM port opened (2 x 32 MiB each, written once), so each "
        "flush is data only\n"
        "- the machine is shared with other helpers running test suites: read the "
        "per-round ratios\n"
        "- Orthanc: its 1.10 defaults; strace shows one fdatasync per instance (the file), "
        "no folder fsync, and its SQLite index synced now and then (3 syncs for 50 "
        "instances), not per instance\n")
    verdicts = [f"- {r.measure} ({r.unit}): {_verdict(r)}, ratio {_ratio(r)}"
                for r in rows if r.target]
    return (stamp + setup + "\n" + markdown_table(rows) + "\n\nTargets (issues 3 and 15):\n\n"
            + "\n".join(verdicts) + "\n")
