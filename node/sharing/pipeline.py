"""Receive, decode and write a bundle at the same time, on two cores.

Why: one thread that receives, decrypts, decompresses and writes is CPU-bound at
1 Gbit/s (``python -m bench.wan``: 0.68 s from the owner against a 0.47 s link limit).
Per 300-slice CT series (56 MB bundle, 158 MB of DICOM) decoding costs about 0.20 s of
CPU (0.37 s before the decoder wrote into its own buffers, node/bundle/native.py) and
writing the files about 0.12-0.3 s, mostly the kernel's copy into the page cache;
libsodium, zstd, hashlib, numpy and file writes all release the GIL, so a decode thread
and a write thread overlap with the event loop's receiving. With the folder sink the
written buffers go back to the decoder (``recycle``): a fresh 512 KiB buffer per slice
is zeroed and page-faulted in each time. Since then the tail after the last byte is
1-3 ms at 1 Gbit/s (bench.wan logs it per fetch).

Each stage is a one-thread executor, so it sees its calls in arrival order; at most
``depth`` calls wait per stage (memory stays bounded whatever the link speed). Work is
submitted with ``loop.run_in_executor``: the simulator's virtual-time loop runs those
calls inline, so a simulated fetch stays deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from node.bundle.stream import BundleDecoder

T = TypeVar("T")
Progress = Callable[[int, int], None]   # (bytes received, instances decoded)
# Received chunks waiting to be decoded (at most 32 x 256 KiB) and decoded batches waiting
# to be written (a batch: what one chunk completed, ~0.7 MB of CT). Not deeper: the
# decode stage's bound counts chunks, and while the writer is the slower stage the decode
# thread turns every queued chunk into a held batch. With 128 / 32 the requester peaked at
# 358 MB fetching a 1 GB series (bench.wan, 2026-12-02 15:06; 184 MB with 32 / 8).
DECODE_DEPTH = 32
WRITE_DEPTH = 8


class _Stage:
    """Calls run in order on one worker thread, at most ``depth`` waiting; a pump task
    awaits them in order and hands each result on as soon as it is ready."""

    def __init__(self, name: str, depth: int, forward: Callable[[Any], Awaitable[None]]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue(depth)
        self._forward = forward
        self._pump = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while (future := await self._queue.get()) is not None:
            await self._forward(await future)

    async def submit(self, func: Callable[..., Any], *args: Any) -> None:
        """Queue ``func(*args)``; waits while ``depth`` calls are queued. Raises at once
        if an earlier call (or what its result was handed to) failed."""
        if self._pump.done():
            self._pump.result()          # re-raises the failure
            raise RuntimeError("pipeline stage used after it finished")
        loop = asyncio.get_running_loop()
        put = asyncio.ensure_future(self._queue.put(loop.run_in_executor(self._pool, func, *args)))
        await asyncio.wait([put, self._pump], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._pump.result()

    async def finish(self) -> None:
        """Wait until every queued call ran and its result was handed on."""
        await self._queue.put(None)
        await self._pump

    def stop(self) -> None:
        """Drop what has not started and wait for the running call (at most one)."""
        self._pump.cancel()
        while not self._queue.empty():
            future = self._queue.get_nowait()
            if future is not None:
                future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


async def decode_stream(stream: AsyncIterator[bytes], decoder: BundleDecoder,
                        add: Callable[[bytearray], None], progress: Progress | None, *,
                        decode_depth: int = DECODE_DEPTH, write_depth: int = WRITE_DEPTH,
                        recycle: bool = False) -> int:
    """Feed ``stream`` through ``decoder`` and every instance, in order, to ``add``.

    ``recycle``: ``add`` is done with each buffer when it returns (it wrote it out and
    keeps no reference), so the buffer goes back to the decoder for a later instance.

    Returns the number of instances. On any error (or cancellation) the worker threads
    have stopped before this returns, so the caller may discard what ``add`` wrote.
    """
    received = count = 0

    def add_all(instances: list[bytearray]) -> None:
        for instance in instances:
            add(instance)
            if recycle:
                decoder.release(instance)

    async def written(_: None) -> None:
        return None

    write = _Stage("bundle-write", write_depth, written)

    async def to_writer(batch: list[bytearray]) -> None:
        nonlocal count
        if batch:
            count += len(batch)
            await write.submit(add_all, batch)

    decode = _Stage("bundle-decode", decode_depth, to_writer)
    try:
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                received += len(chunk)
                await decode.submit(decoder.feed, chunk)
                if progress is not None:
                    progress(received, count)
        await decode.submit(decoder.finish)
        await decode.finish()
        await write.finish()
    finally:
        decode.stop()
        write.stop()
    if progress is not None:
        progress(received, count)
    return count


READ_AHEAD_BYTES = 32 << 20   # what a download may buffer while its key is still on the way


async def read_until_ready(stream: AsyncIterator[bytes], ready: "asyncio.Future[T]",
                           budget: int = READ_AHEAD_BYTES) -> tuple[AsyncIterator[bytes], T]:
    """Read ``stream`` into memory while ``ready`` (e.g. a key-share collection) is pending,
    up to ``budget`` bytes, then wait for it; returns the whole stream again (what was
    buffered first) and ``ready``'s result. Why: with the owner down, a replica download
    and the key-share collection each take a TLS handshake and a request; started
    together instead of one after the other, the fetch saves those round trips (3 RTT =
    60 ms at 20 ms RTT, 13 % of a 1 Gbit/s fetch of a 300-slice CT series). The stream is
    read in the caller's own task (a generator advanced from two tasks would carry its
    timeouts into the wrong one)."""
    if ready.done():
        return stream, ready.result()
    chunks = aiter(stream)
    buffered: list[bytes] = []
    size = 0
    ended = False
    try:
        while not ready.done() and size < budget:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                ended = True
                break
            buffered.append(chunk)
            size += len(chunk)
        result = await ready
    except BaseException:
        await _aclose(stream)
        raise

    async def replay() -> AsyncIterator[bytes]:
        try:
            for chunk in buffered:
                yield chunk
            buffered.clear()
            if not ended:
                async for chunk in chunks:
                    yield chunk
        finally:
            await _aclose(stream)

    return replay(), result


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
