"""Splitting the rest of a holder's records into publisher-id ranges read side by side.

A FIND_VALUE page holds what fits in one datagram (~7 signed records), and a holder
pages on from a cursor (the last publisher id seen). Read one page after another, a
key with many publishers costs one round trip per page: at 1,000 simulated sites 7 of
30 churn-scenario queries read modality + body part keys of more than 64 pages (~450
records, one 40 ms round trip each), ran past the planner's 2.5 s and were broadcast
to every member. Publisher ids are hashes, spread evenly over 256 bits, so
the first page tells how dense they are; the rest of the id space is cut into ranges
of about ``PAGES_PER_SPAN`` pages each, and each range is paged from its own cursor at
the same time (the holder's cursor is stateless: "records after this id").

Pure: no I/O. ``RpcClient.find_value`` does the reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PAGES_PER_SPAN = 3      # pages one range is expected to take


@dataclass(frozen=True)
class Span:
    """Publisher ids ``after < id <= upto`` (``upto`` None: to the end of the space)."""

    after: bytes
    upto: bytes | None

    def holds(self, publisher: bytes) -> bool:
        return publisher > self.after and (self.upto is None or publisher <= self.upto)

    def passed(self, publisher: bytes) -> bool:
        """A record at ``publisher`` or beyond ends this range (it belongs to the next)."""
        return self.upto is not None and publisher >= self.upto


def spans_after(last: bytes, seen: int, most: int) -> list[Span]:
    """Ranges covering every id above ``last`` (the first page's last publisher), as
    many as the first page's density suggests (``seen`` records up to ``last``), at
    least 1 and at most ``most``. Together they cover the rest exactly once."""
    if most < 1:
        raise ValueError("most must be >= 1")
    width = len(last)
    top = (1 << (8 * width)) - 1
    low = int.from_bytes(last, "big")
    if low >= top:
        return []
    covered = (low + 1) / (top + 1)                       # share of the id space read
    left_pages = (1 - covered) / covered if seen else most * PAGES_PER_SPAN
    count = max(1, min(most, math.ceil(left_pages / PAGES_PER_SPAN), top - low))
    step = (top - low) // count
    bounds = [low + i * step for i in range(count)]
    out = []
    for i, start in enumerate(bounds):
        upto = None if i == count - 1 else (bounds[i + 1]).to_bytes(width, "big")
        out.append(Span(start.to_bytes(width, "big"), upto))
    return out


def page_budget(total_pages: int, spans: int) -> int:
    """Pages each range may take so that a holder's reply stays within
    ``total_pages`` (the first page included)."""
    return max(1, (total_pages - 1) // max(spans, 1))
