"""Stopping a background task: the one way the node's services do it.

Cancel, then wait until it has really ended, so nothing it touches (a database, a
socket) is closed under it; its cancellation is the expected outcome, any other
failure it met still surfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: "asyncio.Task[Any] | None") -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class TaskSet:
    """Background tasks kept until they end, in the order they were started.

    A plain ``set`` of tasks iterates in memory-address order, so cancelling "all of
    them" at stop happened in a different order from run to run (and a seeded
    virtual-time simulation could differ). Here iteration follows start order; a task
    leaves by itself when it is done.
    """

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Future[Any], None] = {}

    def add(self, task: "asyncio.Future[Any]") -> None:
        self._tasks[task] = None
        task.add_done_callback(self.discard)

    def discard(self, task: "asyncio.Future[Any]") -> None:
        self._tasks.pop(task, None)

    def take(self) -> list["asyncio.Future[Any]"]:
        """Every task still running, oldest first; the set is empty afterwards."""
        tasks, self._tasks = list(self._tasks), {}
        return tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._tasks))

    def __bool__(self) -> bool:
        return bool(self._tasks)
