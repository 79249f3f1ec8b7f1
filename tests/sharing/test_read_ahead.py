"""read_ahead (node/sharing/pipeline.py): a download that starts before its key is known."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from node.sharing.pipeline import read_ahead


async def _until(check: Callable[[], bool], turns: int = 10_000) -> None:
    """Let the loop run until ``check`` holds (a bounded number of turns, no clock)."""
    for _ in range(turns):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


class Source:
    """An async stream that records how far it was read and whether it was closed."""

    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks, self.fail_at = chunks, fail_at
        self.pulled = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for i, chunk in enumerate(self.chunks):
                if i == self.fail_at:
                    raise ConnectionResetError("link dropped")
                await asyncio.sleep(0)
                self.pulled += 1
                yield chunk
        finally:
            self.closed = True


async def test_bytes_are_pulled_while_the_key_is_pending_and_come_out_unchanged() -> None:
    source = Source([bytes([i]) * 100 for i in range(50)])
    key: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    ahead = read_ahead(source.__aiter__(), key, budget=1000)
    first = asyncio.ensure_future(anext(ahead))
    await _until(lambda: source.pulled >= 10)   # the download runs although nobody has the key
    for _ in range(100):
        await asyncio.sleep(0)
    assert source.pulled == 10            # the budget (1000 bytes) stops the pull ...
    assert first.done()                   # ... and hands out what it holds
    key.set_result(b"k" * 32)
    out = [await first] + [c async for c in ahead]
    assert out == source.chunks and source.closed


async def test_a_key_that_arrives_first_loses_nothing() -> None:
    source = Source([b"a" * 10, b"b" * 10, b"c" * 10])
    key: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    key.set_result(b"k" * 32)
    assert [c async for c in read_ahead(source.__aiter__(), key)] == source.chunks


async def test_a_failing_download_fails_early_and_is_closed() -> None:
    source = Source([b"x" * 10] * 5, fail_at=2)
    key: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    with pytest.raises(ConnectionResetError):
        async for _ in read_ahead(source.__aiter__(), key):
            pass
    assert source.closed and not key.done()


async def test_closing_early_closes_the_download() -> None:
    source = Source([b"y" * 10] * 20)
    key: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    ahead = read_ahead(source.__aiter__(), key, budget=30)
    pending = asyncio.ensure_future(anext(ahead))
    await _until(lambda: source.pulled >= 3)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await ahead.aclose()
    assert source.closed and source.pulled == 3
