"""A worker's virtual-time loop, run window by window: up to a barrier, then stop."""

from __future__ import annotations

import asyncio

from sim.vclock import VirtualTimeLoop


class WindowLoop(VirtualTimeLoop):
    def next_event(self) -> float | None:
        """When the next callback runs (now if one is ready); None if nothing is pending.
        Cancelled timers at the head of the heap are dropped, as asyncio itself does."""
        if self._ready:  # type: ignore[attr-defined]
            return self.time()
        timer = self.next_timer()
        return None if timer is None else timer.when()


async def run_until(when: float) -> None:
    """Run every event before ``when`` (virtual seconds), then return at ``when``."""
    loop = asyncio.get_running_loop()
    barrier: asyncio.Future[None] = loop.create_future()
    loop.call_at(when, barrier.set_result, None)
    await barrier
