"""Pure arithmetic of the WAN benchmark: link specs, the compressed-size link limit,
speed-ups against Orthanc's C-GET, targets, and /proc status parsing.

Why separate: the figures in bench/RESULTS.md are only as good as this arithmetic, so it
lives apart from sockets and processes and has its own unit test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Issue 6: bundle retrieval within 10 % of the link limit, and these speed-ups over C-GET.
LIMIT_SLACK = 1.10
SPEEDUP_TARGETS: dict[tuple[float, float], float] = {(100.0, 20.0): 3.3, (1000.0, 20.0): 10.0}
RSS_TARGET_MB = 300.0
# A new connection: the TCP handshake, then the request inside the first-flight (Noise IK)
# handshake (node.net.firstflight), before the first byte; over TLS 1.3 it was 3
NEW_CONNECTION_RTTS = 2


class LinkSpecError(ValueError):
    """A --links entry is not RATE_MBIT:ONE_WAY_MS."""


@dataclass(frozen=True)
class Link:
    rate_mbit: float
    one_way_ms: float

    @property
    def rtt_ms(self) -> float:
        return 2 * self.one_way_ms

    @property
    def spec(self) -> str:
        return f"{self.rate_mbit:g}:{self.one_way_ms:g}"

    @property
    def label(self) -> str:
        return f"{self.rate_mbit:g} Mbit/s, {self.rtt_ms:g} ms RTT"

    def limit_s(self, nbytes: int, rtts: int = 1) -> float:
        """Ideal time for ``nbytes`` on this link: serialisation plus one round trip (or
        ``rtts``: ``NEW_CONNECTION_RTTS`` for a fetch that must open its connection)."""
        return nbytes * 8 / (self.rate_mbit * 1e6) + rtts * self.rtt_ms / 1e3

    def speedup_target(self) -> float | None:
        return SPEEDUP_TARGETS.get((self.rate_mbit, self.rtt_ms))


def parse_links(text: str) -> list[Link]:
    """``"100:10 1000:10 100:40"`` (also comma separated) into links."""
    links: list[Link] = []
    for item in text.replace(",", " ").split():
        parts = item.split(":")
        if len(parts) != 2:
            raise LinkSpecError(f"link {item!r}: expected RATE_MBIT:ONE_WAY_MS, e.g. 100:10")
        try:
            rate, delay = float(parts[0]), float(parts[1])
        except ValueError:
            raise LinkSpecError(f"link {item!r}: rate and delay must be numbers") from None
        if rate <= 0 or delay < 0:
            raise LinkSpecError(f"link {item!r}: rate must be > 0 and delay >= 0")
        links.append(Link(rate, delay))
    if not links:
        raise LinkSpecError("no links given; e.g. --links '100:10 1000:10'")
    return links


@dataclass(frozen=True)
class OrthancLink:
    cget_s: float
    rawz_s: float
    raw_s: float


def orthanc_by_link(doc: dict[str, Any]) -> dict[tuple[float, float], OrthancLink]:
    """The C-GET and raw-stream seconds of orthanc_wan_baseline.sh's JSON, by (rate, RTT)."""
    out: dict[tuple[float, float], OrthancLink] = {}
    for link in doc.get("links", []):
        key = (float(link["rate_mbit"]), float(link["rtt_ms"]))
        out[key] = OrthancLink(float(link["cget"]["seconds"]), float(link["raw_stream_zstd"]["seconds"]),
                               float(link["raw_stream"]["seconds"]))
    return out


def load_orthanc_json(text: str) -> dict[tuple[float, float], OrthancLink]:
    return orthanc_by_link(json.loads(text))


@dataclass(frozen=True)
class Row:
    link: Link
    path: str               # "owner" or "owner down"
    seconds: float
    bundle_bytes: int
    cget_s: float | None
    new_connection: bool = False   # a cold process: no connection open before the fetch

    @property
    def limit_s(self) -> float:
        return self.link.limit_s(self.bundle_bytes)

    @property
    def floor_s(self) -> float | None:
        """A new connection's floor, bytes / rate + 2 RTT (cold rows only)."""
        return self.link.limit_s(self.bundle_bytes, NEW_CONNECTION_RTTS) if self.new_connection else None

    @property
    def vs_floor(self) -> float | None:
        floor = self.floor_s
        return None if floor is None else self.seconds / floor

    @property
    def vs_limit(self) -> float:
        return self.seconds / self.limit_s

    @property
    def speedup(self) -> float | None:
        return None if self.cget_s is None else self.cget_s / self.seconds

    @property
    def limit_met(self) -> bool:
        return self.vs_limit <= LIMIT_SLACK

    @property
    def speedup_met(self) -> bool | None:
        target = self.link.speedup_target()
        if target is None or self.speedup is None:
            return None
        return self.speedup >= target


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def table(rows: list[Row]) -> list[str]:
    """Markdown table of the retrieval rows."""
    lines = ["| link | path | medfed s | Orthanc C-GET s | speed-up | target speed-up | "
             "link limit s | medfed / limit | ≤ 1.10 × limit | medfed / new-connection floor | "
             "speed-up met |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = r.link.speedup_target()
        lines.append(
            f"| {r.link.label} | {r.path} | {r.seconds:.2f} | "
            f"{'-' if r.cget_s is None else f'{r.cget_s:.2f}'} | "
            f"{'-' if r.speedup is None else f'{r.speedup:.1f}×'} | "
            f"{'-' if target is None else f'≥ {target:g}×'} | {r.limit_s:.2f} | {r.vs_limit:.2f} | "
            f"{_mark(r.limit_met)} | {'-' if r.vs_floor is None else f'{r.vs_floor:.2f}'} | "
            f"{_mark(r.speedup_met)} |")
    return lines


def vm_rss_kb(status_text: str) -> int:
    """VmRSS of a /proc/<pid>/status text, in kB (0 if absent, e.g. a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
    return 0
