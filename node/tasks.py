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
