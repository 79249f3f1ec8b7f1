"""Audit refused TLS handshakes without letting a flood of them flood the audit log.

The first refusal of a quiet period is audited in full (who, why). Further refusals in
the next ``window_s`` seconds are only counted; when the window closes one summary
entry records how many there were, from how many addresses (a few named) and why. So
a scanner knocking a thousand times a second costs two audit entries per window, and
an isolated misconfigured member still shows up at once with its reason.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

MAX_NAMED_SOURCES = 5
Write = Callable[..., None]   # write(actor, outcome, **detail) -> one audit entry


class RefusalSummary:
    def __init__(self, write: Write, window_s: float = 60.0) -> None:
        if window_s <= 0:
            raise ValueError("the summary window must be > 0 seconds")
        self._write = write
        self.window_s = window_s
        self._timer: asyncio.TimerHandle | None = None
        self._count = 0
        self._sources: set[str] = set()
        self._reasons: Counter[str] = Counter()

    def note(self, where: str, reason: str) -> None:
        """One refused handshake from ``where`` (an address), called on the event loop."""
        if self._timer is None:
            self._write(where, "refused", code="tls_refused", reason=reason)
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self.flush)
            return
        self._count += 1
        self._reasons[reason] += 1
        if len(self._sources) < 1000:   # bounded memory; the count stays exact
            self._sources.add(where.rsplit(":", 1)[0])

    def flush(self) -> None:
        """Write the summary of the window (if anything was counted) and close it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            named = sorted(self._sources)[:MAX_NAMED_SOURCES]
            self._write("summary", "refused", code="tls_refused_summary", count=self._count,
                        window_s=self.window_s, sources=len(self._sources),
                        named_sources=",".join(named),
                        reason="; ".join(f"{n} x {r}" for r, n in self._reasons.most_common(3)))
        self._count = 0
        self._sources.clear()
        self._reasons.clear()
