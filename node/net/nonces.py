"""Replay guard: remembers (sender, nonce) until the request it came with has expired.

Memory is bounded: entries leave when their request can no longer be accepted anyway,
and when the cache is full of live entries new requests are refused (fail closed)
instead of forgetting nonces that could still be replayed.

With a journal file the cache survives a restart: each new nonce is appended (one line,
flushed to the OS before the request is served, so a crash of the process loses none)
and the live ones are read back at start. Without it, a request signed by a sender whose
clock runs ahead (within the allowed skew) and captured before a restart would pass
again after it. The journal is rewritten with only the live entries once dead lines
outnumber them, so it stays within about twice the cache's capacity.
"""

from __future__ import annotations

import heapq
import os
import re
from pathlib import Path
from typing import TextIO

_LINE = re.compile(r"^([0-9]{1,12}) ([0-9a-f]{64}) ([0-9a-f]{32})$")
_COMPACT_MIN = 1024


class NonceCache:
    def __init__(self, capacity: int = 100_000, *, journal: Path | None = None,
                 now: float = 0.0) -> None:
        if capacity < 1:
            raise ValueError("nonce cache capacity must be at least 1")
        self.capacity = capacity
        self._until: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._journal = journal
        self._file: TextIO | None = None
        self._lines = 0
        if journal is not None:
            self._load(journal, now)
            self._rewrite()

    def __len__(self) -> int:
        return len(self._until)

    def purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            until, key = heapq.heappop(self._heap)
            if self._until.get(key) == until:
                del self._until[key]
        if self._file is not None and self._lines > max(_COMPACT_MIN, 2 * len(self._until)):
            self._rewrite()

    def remember(self, sender: str, nonce: str, until: float, now: float) -> str:
        """'new', 'replay' (seen and still live) or 'full' (no room; refuse)."""
        self.purge(now)
        key = (sender, nonce)
        if key in self._until:
            return "replay"
        if len(self._until) >= self.capacity:
            return "full"
        self._add(key, until)
        if self._file is not None:
            self._file.write(f"{int(until)} {sender} {nonce}\n")
            self._file.flush()
            self._lines += 1
        return "new"

    def clear(self) -> None:
        """Close the journal (its live entries stay for the next start) and forget."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._until.clear()
        self._heap.clear()

    # -- journal -------------------------------------------------------------
    def _add(self, key: tuple[str, str], until: float) -> None:
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))

    def _load(self, journal: Path, now: float) -> None:
        try:
            text = journal.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            match = _LINE.match(line)   # a torn last line after a crash is skipped
            if match and int(match[1]) >= now and len(self._until) < self.capacity:
                self._add((match[2], match[3]), float(match[1]))

    def _rewrite(self) -> None:
        """Replace the journal by the live entries (atomically), then append to it."""
        assert self._journal is not None
        if self._file is not None:
            self._file.close()
        tmp = self._journal.with_name(self._journal.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            for (sender, nonce), until in self._until.items():
                out.write(f"{int(until)} {sender} {nonce}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._journal)
        self._lines = len(self._until)
        self._file = open(self._journal, "a", encoding="ascii")
