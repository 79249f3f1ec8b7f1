"""Replay guard: remembers (sender, nonce) until the request it came with has expired.

Memory is bounded: entries leave when their request can no longer be accepted anyway,
and when the cache is full of live entries new requests are refused (fail closed)
instead of forgetting nonces that could still be replayed.
"""

from __future__ import annotations

import heapq


class NonceCache:
    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("nonce cache capacity must be at least 1")
        self.capacity = capacity
        self._until: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._until)

    def purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            until, key = heapq.heappop(self._heap)
            if self._until.get(key) == until:
                del self._until[key]

    def remember(self, sender: str, nonce: str, until: float, now: float) -> str:
        """'new', 'replay' (seen and still live) or 'full' (no room; refuse)."""
        self.purge(now)
        key = (sender, nonce)
        if key in self._until:
            return "replay"
        if len(self._until) >= self.capacity:
            return "full"
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))
        return "new"

    def clear(self) -> None:
        self._until.clear()
        self._heap.clear()
