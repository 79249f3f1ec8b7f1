"""Replay guard: remembers recently seen (sender, kind, msg_id) triples.

Datagrams older or newer than the skew window are refused outright, so a triple only
needs remembering for twice that window; memory is bounded by ``max_entries`` (beyond
it the oldest entries are forgotten first, which only re-opens replay for datagrams
that are about to fall out of the window anyway under normal load).
"""

from __future__ import annotations

from collections import OrderedDict


class ReplayCache:
    def __init__(self, window_ms: int, max_entries: int = 200_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def first_seen(self, fingerprint: bytes, now_ms: int) -> bool:
        """True the first time ``fingerprint`` is offered within the window."""
        self._prune(now_ms)
        if fingerprint in self._seen:
            return False
        self._seen[fingerprint] = now_ms + 2 * self.window_ms
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return True

    def _prune(self, now_ms: int) -> None:
        while self._seen:
            fingerprint, expiry = next(iter(self._seen.items()))
            if expiry > now_ms:
                return
            del self._seen[fingerprint]

    def __len__(self) -> int:
        return len(self._seen)
