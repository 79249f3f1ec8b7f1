"""Virtual time: an asyncio event loop whose clock jumps to the next timer.

Why: a simulator whose figures depend on how busy its host is cannot compare designs
or prove a promise. Under ``VirtualTimeLoop`` the node code runs unchanged — every
``asyncio.sleep``, ``wait_for`` deadline, ``call_later`` link delay, republish and
repair interval is a timer on this loop — but when nothing is ready to run the clock
advances straight to the earliest timer instead of waiting for it. Computation takes
no virtual time; only modelled delays do. A run is therefore a deterministic function
of its inputs and seed, however loaded the machine.

What would break that, and what is done about it:

* threads handing results back at unpredictable moments: ``run_in_executor`` (hence
  ``asyncio.to_thread``) runs the function inline on the loop thread, and
  ``inline_sqlite()`` makes aiosqlite run its statements inline instead of on its
  worker thread (the SQLite files stay real);
* real sockets and TLS: the simulator gives every node an in-memory transport
  (``sim.network``); the only file descriptor the loop still watches is its own
  wake-up pipe;
* wall-clock reads: the node's signed timestamps come from ``Transport.wall_clock``,
  which the simulator derives from this loop's clock (``EPOCH + loop.time()``).

Files stay real (every node has its own SQLite file, audit log, roster), but
``os.fsync`` is a no-op while a virtual run lasts (``no_fsync``): a crash of the
simulator loses nothing that matters, as with SQLite's ``synchronous=NORMAL`` there,
and a thousand nodes' membership files, audit heads and rosters cost seconds of
fsync (3 ms each here) that model nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import selectors
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from typing import Any, TypeVar

import aiosqlite
import aiosqlite.core

T = TypeVar("T")

_MAX_SELECT_TIMEOUT = 24 * 3600   # asyncio's MAXIMUM_SELECT_TIMEOUT

EPOCH = 1_767_225_600.0   # 2026-01-01T00:00:00Z: the wall clock at virtual time 0


class _JumpingSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking; an idle wait becomes a jump."""

    # While callbacks are ready the loop asks for a zero-timeout poll every step; only
    # the self-pipe is watched (threads hand work back through it, rarely: executors
    # and SQLite run inline), so such steps poll every POLL_EVERY-th time. A 300-node
    # churn run takes 5 million loop steps: one epoll call each was 3 % of its CPU.
    POLL_EVERY = 64

    def __init__(self) -> None:
        super().__init__()
        self.loop: "VirtualTimeLoop | None" = None
        self._busy_steps = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout == 0 and self.loop is not None:
            self._busy_steps += 1
            if self._busy_steps % self.POLL_EVERY:
                return []
        events = super().select(0)
        if events or timeout == 0 or self.loop is None:
            return events
        if timeout is None:
            # nothing scheduled: only another thread can wake us (real wait)
            return super().select(0.05)
        self.loop.advance_to_next_timer(timeout)
        return []


# asyncio's own values (base_events): purge cancelled timers when they are over half
# of more than 100 scheduled.
_MIN_SCHEDULED = 100
_MAX_CANCELLED_FRACTION = 0.5


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """The timer heap holds ``(when, handle)`` pairs instead of bare handles. asyncio
    orders ``TimerHandle``s with a Python ``__lt__`` (by ``when`` alone); a 1,000-node
    run pushes and pops millions of timers (an RPC deadline and a link delay per
    datagram) into a heap of ~10⁵, and those comparisons were 5 % of its CPU. A pair
    compares its float in C, and on a tie falls back to the handles' own ``<``, which
    is false both ways as between bare handles: every comparison answers as before,
    so the heap pops in exactly the order asyncio's would (same runs, same reports)."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._virtual_now

    def next_timer(self) -> asyncio.TimerHandle | None:
        """The earliest scheduled timer that is not cancelled (dropping cancelled ones
        at the head of the heap, as asyncio itself does), or None."""
        heap = self._scheduled  # type: ignore[attr-defined]
        while heap and heap[0][1]._cancelled:
            self._timer_cancelled_count -= 1  # type: ignore[attr-defined]
            heapq.heappop(heap)[1]._scheduled = False
        return heap[0][1] if heap else None

    def advance_to_next_timer(self, timeout: float) -> None:
        scheduled = getattr(self, "_scheduled", None)
        target = scheduled[0][0] if scheduled else self._virtual_now + timeout
        self._virtual_now = max(self._virtual_now, target)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                context: Any = None) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        if self._debug:  # type: ignore[attr-defined]
            self._check_thread()  # type: ignore[attr-defined]
            self._check_callback(callback, "call_at")  # type: ignore[attr-defined]
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:  # type: ignore[attr-defined]
            del timer._source_traceback[-1]  # type: ignore[attr-defined]
        heapq.heappush(self._scheduled, (timer._when, timer))  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def _run_once(self) -> None:
        """``BaseEventLoop._run_once`` (Python 3.11) on the heap of pairs."""
        heap = self._scheduled  # type: ignore[attr-defined]
        count = len(heap)
        if (count > _MIN_SCHEDULED and self._timer_cancelled_count / count  # type: ignore[attr-defined]
                > _MAX_CANCELLED_FRACTION):
            kept = []
            for entry in heap:
                if entry[1]._cancelled:
                    entry[1]._scheduled = False
                else:
                    kept.append(entry)
            heapq.heapify(kept)
            self._scheduled = heap = kept
            self._timer_cancelled_count = 0
        else:
            self.next_timer()   # drops the cancelled timers at the head

        ready = self._ready  # type: ignore[attr-defined]
        timeout = None
        if ready or self._stopping:  # type: ignore[attr-defined]
            timeout = 0.0
        elif heap:
            timeout = min(max(0.0, heap[0][0] - self.time()), _MAX_SELECT_TIMEOUT)
        event_list = self._selector.select(timeout)  # type: ignore[attr-defined]
        self._process_events(event_list)  # type: ignore[attr-defined]
        event_list = None

        end_time = self.time() + self._clock_resolution
        while heap:
            if heap[0][0] >= end_time:
                break
            handle = heapq.heappop(heap)[1]
            handle._scheduled = False
            ready.append(handle)

        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            if self._debug:  # type: ignore[attr-defined]
                try:
                    self._current_handle = handle
                    handle._run()
                finally:
                    self._current_handle = None
            else:
                handle._run()
        handle = None

    def run_in_executor(self, executor: Any, func: Callable[..., T],  # type: ignore[override]
                        *args: Any) -> asyncio.Future[T]:
        """Inline: a thread would finish at a moment no seed controls."""
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            future.set_exception(exc)
        return future


class InlineConnection(aiosqlite.Connection):
    """aiosqlite's API, statements run on the loop thread (no worker thread)."""

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._connect().__await__()

    async def _connect(self) -> "InlineConnection":
        if self._connection is None:
            self._connection = self._connector()
        return self

    async def _execute(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._running = False

    def stop(self) -> None:  # type: ignore[override]
        self._running = False


def _inline_connect(database: Any, *, iter_chunk_size: int = 64, loop: Any = None,
                    **kwargs: Any) -> InlineConnection:
    return InlineConnection(partial(sqlite3.connect, str(database), **kwargs), iter_chunk_size)


@contextlib.contextmanager
def inline_sqlite() -> Iterator[None]:
    """While a virtual run lasts, ``aiosqlite.connect`` opens inline connections."""
    saved = (aiosqlite.connect, aiosqlite.core.connect)
    aiosqlite.connect = aiosqlite.core.connect = _inline_connect  # type: ignore[assignment]
    try:
        yield
    finally:
        aiosqlite.connect, aiosqlite.core.connect = saved  # type: ignore[assignment]


@contextlib.contextmanager
def no_fsync() -> Iterator[None]:
    """While a virtual run lasts, ``os.fsync`` returns at once (see the module doc)."""
    saved = os.fsync
    os.fsync = _skip_fsync
    try:
        yield
    finally:
        os.fsync = saved


def _skip_fsync(fd: Any) -> None:
    return None


def run_virtual(main: Coroutine[Any, Any, T],
                loop_factory: Callable[[], VirtualTimeLoop] = VirtualTimeLoop) -> T:
    """``asyncio.run`` on a fresh virtual-time loop."""
    with inline_sqlite(), no_fsync(), asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
