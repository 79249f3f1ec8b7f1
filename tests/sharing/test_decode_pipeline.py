"""The receive/decode/write pipeline of a fetch (node/sharing/pipeline.py), on real bundles.

What must hold whatever the threads do: every instance reaches the sink once, in bundle
order; a tampered stream fails; after any failure or cancellation no worker thread is
still writing (the caller discards the sink next, then may retry into it); memory stays
bounded when the writer is slower than the network.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator

import pytest

from node.bundle.stream import BundleDecoder, BundleEncoder, BundleTamperedError, new_bundle_key
from node.sharing.pipeline import decode_stream
from node.sharing.retrieve import decode_into
from node.sharing.sinks import DicomFolderSink, write_new_file


def _bundle(count: int, size: int = 3000) -> tuple[bytes, str, bytes, list[bytes]]:
    key = new_bundle_key()
    instances = [os.urandom(size) + i.to_bytes(4, "big") for i in range(count)]
    encoder = BundleEncoder(key, chunk_size=1024, shuffle=False)
    stored = b"".join([encoder.add(x) for x in instances] + [encoder.finish()])
    return key, encoder.info.bundle_id, stored, instances


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await asyncio.sleep(0)


def _workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("bundle-")]


async def test_every_instance_arrives_once_in_order_with_progress() -> None:
    key, bundle_id, stored, instances = _bundle(120)
    got: list[bytes] = []
    seen: list[tuple[int, int]] = []
    count = await decode_stream(_chunks(stored, 777), BundleDecoder(key, expected_id=bundle_id),
                                got.append, lambda received, n: seen.append((received, n)))
    assert count == 120 and got == instances
    assert seen[-1] == (len(stored), 120)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(seen, seen[1:]))
    assert not _workers()


async def test_recycled_buffers_reach_the_sink_intact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With ``recycle`` (the folder sink keeps no reference), each buffer goes back to the
    decoder once written and carries a later instance: every file still holds its own."""
    key, bundle_id, stored, instances = _bundle(150, size=40_000)
    sink = DicomFolderSink(tmp_path / "out")
    assert sink.reuses_buffers
    decoder = BundleDecoder(key, expected_id=bundle_id)
    released: list[int] = []
    original = decoder.release
    decoder.release = lambda buf: (released.append(id(buf)), original(buf))[1]  # type: ignore[method-assign]
    count = await decode_stream(_chunks(stored, 30_000), decoder, sink.add, None, recycle=True)
    files = sink.commit()
    assert count == 150 and [f.read_bytes() for f in files] == instances
    assert len(released) == 150


async def test_a_tampered_stream_fails_and_no_worker_outlives_the_call() -> None:
    key, bundle_id, stored, _ = _bundle(60)
    bad = bytearray(stored)
    bad[len(bad) // 2] ^= 0x01
    written: list[bytes] = []
    with pytest.raises(BundleTamperedError):
        await decode_stream(_chunks(bytes(bad), 500), BundleDecoder(key, expected_id=bundle_id),
                            written.append, None)
    after = len(written)
    assert not _workers()          # nothing can still be appending
    assert after == len(written) and after < 60


async def test_cancellation_stops_the_workers_before_it_propagates() -> None:
    key, bundle_id, stored, _ = _bundle(200)   # 600 KB: zstd hands out 128 KB at a time
    loop = asyncio.get_running_loop()
    first_written = asyncio.Event()

    async def cut_then_hang() -> AsyncIterator[bytes]:
        yield stored[: len(stored) // 2]
        await asyncio.Event().wait()     # the network stops: only cancellation ends this
        yield b""

    written: list[bytes] = []

    def add(instance: bytes) -> None:
        written.append(instance)
        loop.call_soon_threadsafe(first_written.set)

    task = asyncio.ensure_future(decode_stream(cut_then_hang(), BundleDecoder(key, expected_id=bundle_id),
                                               add, None))
    await first_written.wait()       # what arrived is decoded and written while the link stalls
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _workers()
    done = len(written)
    assert 0 < done < 200 and len(written) == done


async def test_a_slow_writer_holds_back_the_network() -> None:
    """While the sink is stuck, the pipeline stops pulling after a bounded number of bytes:
    the queued chunks, the queued batches (zstd hands out up to 128 KB at a time) and
    one batch in the writer's hands."""
    key, bundle_id, stored, instances = _bundle(8000, size=600)
    release = threading.Event()
    chunk = 1041                       # one secretstream message of the 1024-byte chunks
    depths = {"decode_depth": 8, "write_depth": 4}
    bound = (8 + 2) * chunk + (4 + 2) * ((128 << 10) + 2 * chunk)
    pulled_while_stuck = 0
    writes = 0

    def slow_add(instance: bytes) -> None:
        nonlocal writes
        release.wait()
        writes += 1

    async def counted() -> AsyncIterator[bytes]:
        nonlocal pulled_while_stuck
        for i in range(0, len(stored), chunk):
            if not release.is_set():
                pulled_while_stuck += len(stored[i:i + chunk])
                if pulled_while_stuck > bound:
                    release.set()        # no backpressure: end the test (and fail it)
            yield stored[i:i + chunk]

    asyncio.get_running_loop().call_later(0.3, release.set)  # how long it is stuck: any
    count = await decode_stream(counted(), BundleDecoder(key, expected_id=bundle_id), slow_add, None,
                                **depths)
    assert count == writes == len(instances)
    assert len(stored) > 3 * bound
    assert pulled_while_stuck <= bound


async def test_a_stream_cut_mid_way_leaves_no_file_behind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Into the real DICOM folder sink: the instances written before the cut are staged
    in a hidden folder, which the failure removes; the target never appears."""
    key, bundle_id, stored, _ = _bundle(80)
    with pytest.raises(BundleTamperedError):
        await decode_into(_chunks(stored[: len(stored) * 2 // 3], 900), key, bundle_id,
                          DicomFolderSink(tmp_path / "series"), None, source="test", identified=False)
    assert list(tmp_path.iterdir()) == []


async def test_a_cancelled_fetch_leaves_no_file_behind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key, bundle_id, stored, _ = _bundle(200)
    loop = asyncio.get_running_loop()
    staged = asyncio.Event()

    class Watched(DicomFolderSink):
        def add(self, instance: bytes | bytearray) -> None:
            super().add(instance)
            loop.call_soon_threadsafe(staged.set)     # a file is in the stage now

    async def half_then_hang() -> AsyncIterator[bytes]:
        yield stored[: len(stored) // 2]
        await asyncio.Event().wait()     # the network stops: only cancellation ends this
        yield b""

    task = asyncio.ensure_future(decode_into(half_then_hang(), key, bundle_id, Watched(tmp_path / "series"),
                                             None, source="test", identified=False))
    await staged.wait()
    assert any(tmp_path.glob(".fetch-*/IM*.dcm"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.iterdir()) == []
    assert not _workers()


def test_a_fetched_file_is_never_written_over(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "IM00001.dcm"
    write_new_file(str(path), bytearray(b"first"))
    with pytest.raises(FileExistsError):
        write_new_file(str(path), b"second")
    assert path.read_bytes() == b"first"
