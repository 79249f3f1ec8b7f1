"""Figures of one benchmark run and how they compare with the Orthanc anchor (pure).

Why ratios: the machine is noisy (10-30 % between runs), so a figure only means
something next to Orthanc measured in the same invocation on the same data.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Literal, Sequence


@dataclass(frozen=True)
class Rate:
    """A timed transfer of ``instances`` files, ``nbytes`` bytes in all."""

    seconds: float
    instances: int
    nbytes: int

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float


def percentile(sorted_ms: Sequence[float], p: float) -> float:
    """Nearest-rank on the sorted list, as orthanc_baseline.sh computes it."""
    if not sorted_ms:
        raise ValueError("no samples")
    return sorted_ms[min(len(sorted_ms) - 1, int(round(p / 100 * (len(sorted_ms) - 1))))]


def latency(samples_ms: Sequence[float]) -> Latency:
    v = sorted(samples_ms)
    return Latency(len(v), percentile(v, 50), percentile(v, 95), statistics.mean(v))


@dataclass(frozen=True)
class ServerFigures:
    """One server's figures on the series: ingest (1 and N associations), C-FIND
    (pynetdicom loop on one association, a new association per query, one findscu
    process per query, and dcmtk ``findscu --repeat`` ms per query), C-GET, C-MOVE."""

    ingest_1: Rate
    ingest_n: Rate
    find: Latency
    get: Rate
    find_repeat_ms: float | None = None
    move: Rate | None = None
    find_fresh: Latency | None = None     # pynetdicom, a new association per query
    find_process: Latency | None = None   # dcmtk findscu, a new process per query


@dataclass(frozen=True)
class Comparison:
    """One row of the report: medfed against Orthanc on one measure."""

    measure: str
    unit: str
    medfed: float
    orthanc: float | None
    better: Literal["higher", "lower"]
    target: bool  # the issue sets a target for this row
    round_ratios: tuple[float, ...] = ()  # the same ratio in each interleaved round
    # (medfed, Orthanc) in each round: tells a slow medfed round from a fast Orthanc one
    round_values: tuple[tuple[float, float], ...] = ()

    @property
    def ratio(self) -> float | None:
        if self.orthanc is None or self.orthanc == 0:
            return None
        return self.medfed / self.orthanc

    @property
    def met(self) -> bool | None:
        """Target met? None when there is no target or no anchor to compare with."""
        if not self.target or self.ratio is None:
            return None
        return self.ratio >= 1.0 if self.better == "higher" else self.ratio <= 1.0


def _median_rate(rates: Sequence[Rate]) -> Rate:
    mid = sorted(rates, key=lambda r: r.seconds)[len(rates) // 2]
    return Rate(statistics.median(r.seconds for r in rates), mid.instances, mid.nbytes)


def median_figures(rounds: Sequence[ServerFigures]) -> ServerFigures:
    """Per-measure median over interleaved rounds: one slow round (a noisy neighbour,
    a writeback burst) does not decide the verdict."""
    if not rounds:
        raise ValueError("no rounds")
    return ServerFigures(
        ingest_1=_median_rate([r.ingest_1 for r in rounds]),
        ingest_n=_median_rate([r.ingest_n for r in rounds]),
        find=_median_latency([r.find for r in rounds]),
        get=_median_rate([r.get for r in rounds]),
        find_repeat_ms=_median_or_none([r.find_repeat_ms for r in rounds]),
        move=_median_rate([r.move for r in rounds if r.move is not None])
        if all(r.move is not None for r in rounds) else None,
        find_fresh=_median_latency_or_none([r.find_fresh for r in rounds]),
        find_process=_median_latency_or_none([r.find_process for r in rounds]))


def _median_latency(values: Sequence[Latency]) -> Latency:
    return Latency(sum(v.n for v in values), statistics.median(v.p50_ms for v in values),
                   statistics.median(v.p95_ms for v in values),
                   statistics.median(v.mean_ms for v in values))


def _median_latency_or_none(values: Sequence[Latency | None]) -> Latency | None:
    present = [v for v in values if v is not None]
    return _median_latency(present) if present and len(present) == len(values) else None


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present and len(present) == len(values) else None


def compare(medfed: ServerFigures, orthanc: ServerFigures | None, parallel: int) -> list[Comparison]:
    """The report rows; targets (issues 3 and 15): ingest on 1 and N associations
    >= 1.0x Orthanc, C-FIND <= Orthanc's time, C-GET and C-MOVE MB/s >= Orthanc's."""
    o = orthanc

    def row(measure: str, unit: str, mine: float, theirs: float | None,
            better: Literal["higher", "lower"] = "higher", target: bool = False) -> Comparison:
        return Comparison(measure, unit, mine, theirs if o is not None else None, better, target)

    return [
        row("ingest, 1 association", "inst/s", medfed.ingest_1.inst_per_s,
            o.ingest_1.inst_per_s if o else None, target=True),
        row("ingest, 1 association", "MB/s", medfed.ingest_1.mb_per_s,
            o.ingest_1.mb_per_s if o else None, target=True),
        row(f"ingest, {parallel} parallel senders", "inst/s", medfed.ingest_n.inst_per_s,
            o.ingest_n.inst_per_s if o else None, target=True),
        row(f"ingest, {parallel} parallel senders", "MB/s", medfed.ingest_n.mb_per_s,
            o.ingest_n.mb_per_s if o else None),
        row("C-FIND study level, p50", "ms", medfed.find.p50_ms,
            o.find.p50_ms if o else None, better="lower", target=True),
        row("C-FIND study level, p95", "ms", medfed.find.p95_ms,
            o.find.p95_ms if o else None, better="lower"),
        row("C-GET series", "MB/s", medfed.get.mb_per_s, o.get.mb_per_s if o else None,
            target=True),
        row("C-GET series", "inst/s", medfed.get.inst_per_s, o.get.inst_per_s if o else None),
    ] + _extra_rows(medfed, o, row)


def _extra_rows(medfed: ServerFigures, o: ServerFigures | None, row) -> list[Comparison]:  # type: ignore[no-untyped-def]
    """The other C-FIND measures and C-MOVE, when both servers were measured that way."""
    rows = []
    for label, mine_l, theirs_l in (
            ("C-FIND study level, new association per query (pynetdicom), p50",
             medfed.find_fresh, o.find_fresh if o else None),
            ("C-FIND study level, one findscu process per query, p50",
             medfed.find_process, o.find_process if o else None)):
        if mine_l is not None:
            rows.append(row(label, "ms", mine_l.p50_ms, theirs_l.p50_ms if theirs_l else None,
                            better="lower", target=True))
    if medfed.find_repeat_ms is not None:
        rows.append(row("C-FIND study level, findscu --repeat", "ms/query",
                        medfed.find_repeat_ms, o.find_repeat_ms if o else None,
                        better="lower", target=True))
    if medfed.move is not None:
        theirs = o.move if o is not None else None
        rows.append(row("C-MOVE series to storescp", "MB/s", medfed.move.mb_per_s,
                        theirs.mb_per_s if theirs else None, target=True))
        rows.append(row("C-MOVE series to storescp", "inst/s", medfed.move.inst_per_s,
                        theirs.inst_per_s if theirs else None))
    return rows


def compare_rounds(medfed: Sequence[ServerFigures], orthanc: Sequence[ServerFigures] | None,
                   parallel: int) -> list[Comparison]:
    """Rows on the per-measure medians, each carrying its ratio in every round."""
    rows = compare(median_figures(medfed), median_figures(orthanc) if orthanc else None,
                   parallel)
    if not orthanc:
        return rows
    per_round = [compare(m, o, parallel) for m, o in zip(medfed, orthanc)]
    return [replace(row, round_ratios=tuple(r[i].ratio for r in per_round
                                            if r[i].ratio is not None),
                    round_values=tuple((r[i].medfed, r[i].orthanc) for r in per_round
                                       if r[i].orthanc is not None))
            for i, row in enumerate(rows)]
