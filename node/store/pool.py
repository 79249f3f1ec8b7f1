"""A fixed set of read connections handed out one query at a time.

Why: with one shared read connection a slow query (a wide date range, a first index
publish) held every other read behind it; with a small pool a PatientID C-FIND keeps
its sub-millisecond latency while a long query runs on another connection.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Generic, TypeVar

C = TypeVar("C")


class ReaderPool(Generic[C]):
    def __init__(self, connections: list[C]) -> None:
        if not connections:
            raise ValueError("a reader pool needs at least one connection")
        self.connections = list(connections)
        self._free: asyncio.Queue[C] = asyncio.Queue()
        for conn in connections:
            self._free.put_nowait(conn)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[C]:
        conn = await self._free.get()
        try:
            yield conn
        finally:
            self._free.put_nowait(conn)
