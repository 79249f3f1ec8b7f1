"""read_until_ready (node/sharing/pipeline.py): a download that starts before its key is known."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from node.sharing.pipeline import read_until_ready


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


def _pending() -> asyncio.Future[bytes]:
    return asyncio.get_running_loop().create_future()


async def test_bytes_are_read_while_the_key_is_pending_up_to_the_budget() -> None:
    source = Source([bytes([i]) * 100 for i in range(50)])
    key = _pending()
    task = asyncio.ensure_future(read_until_ready(source.__aiter__(), key, budget=1000))
    for _ in range(1000):
        await asyncio.sleep(0)
    assert source.pulled == 10 and not task.done()   # the budget stops the reading; waits
    key.set_result(b"k" * 32)
    stream, secret = await task
    assert secret == b"k" * 32
    assert [c async for c in stream] == source.chunks and source.closed


async def test_a_key_that_arrives_first_loses_nothing() -> None:
    source = Source([b"a" * 10, b"b" * 10, b"c" * 10])
    key = _pending()
    key.set_result(b"k" * 32)
    stream, _ = await read_until_ready(source.__aiter__(), key)
    assert source.pulled == 0                        # nothing to overlap: read later
    assert [c async for c in stream] == source.chunks


async def test_a_failing_download_fails_early_and_is_closed() -> None:
    source = Source([b"x" * 10] * 5, fail_at=2)
    with pytest.raises(ConnectionResetError):
        await read_until_ready(source.__aiter__(), _pending())
    assert source.closed


async def test_a_failed_key_closes_the_download() -> None:
    source = Source([b"y" * 10] * 20)
    key = _pending()
    task = asyncio.ensure_future(read_until_ready(source.__aiter__(), key, budget=30))
    for _ in range(100):
        await asyncio.sleep(0)
    key.set_exception(LookupError("too few shares"))
    with pytest.raises(LookupError):
        await task
    assert source.closed and source.pulled == 3
