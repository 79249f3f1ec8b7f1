"""Reads do not queue behind each other (issue 12): while one answer is being streamed
(its reader held by a consumer that has not finished), other queries still run; an
abandoned stream gives its reader back."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.store.db import MetadataStore
from node.synth.metadata import fill_store
from tests.store_backends import KINDS, store_url


@pytest.mark.parametrize("kind", KINDS)
async def test_a_held_stream_does_not_block_other_reads(kind: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    url = store_url(kind, request)
    async with MetadataStore(tmp_path / "m.sqlite", url=url, readers=2) as store:
        await fill_store(store, 1200, seed=2)
        slow = store.stream("SELECT sop_uid FROM instances ORDER BY id", batch=10)
        first = await slow.__anext__()          # a reader is now held mid-answer
        assert first[0]
        for _ in range(3):                      # the other reader keeps answering
            row = await store.fetchone("SELECT count(*) FROM instances")
            assert int(row[0]) == 1200
        rest = [r async for r in slow]          # the slow answer completes unharmed
        assert len(rest) == 1199

        abandoned = store.stream("SELECT sop_uid FROM instances", batch=10)
        await abandoned.__anext__()
        await abandoned.aclose()                # consumer went away (e.g. C-CANCEL)
        held = [store.stream("SELECT 1", batch=1) for _ in range(2)]
        for s in held:                          # both readers are free again
            assert (await s.__anext__())[0] == 1
        for s in held:
            await s.aclose()


async def test_association_threads_share_kept_sqlite_readers(tmp_path: Path) -> None:
    """``read_sync`` (DICOM association threads): a reader is kept between threads
    (one per concurrent read, not one per thread) and closed with the store; a read
    after close is refused with a StoreError."""
    import asyncio
    import sqlite3
    import threading

    from node.store.db import StoreError

    store = await MetadataStore(tmp_path / "m.sqlite").open()
    await fill_store(store, 50, seed=3)
    counts: list[int] = []

    def one_association() -> None:
        rows = store.read_sync("SELECT count(*) FROM instances")
        assert rows is not None
        counts.append(int(rows[0][0]))

    for _ in range(5):                       # five association threads, one after another
        thread = threading.Thread(target=one_association)
        thread.start()
        thread.join()
    assert counts == [50] * 5
    assert len(store._sync_readers) == 1     # one connection served all five
    kept = store._sync_readers[0]
    await store.close()
    assert store._sync_readers == []
    with pytest.raises(sqlite3.ProgrammingError):   # the kept connection was closed
        kept.execute("SELECT 1")
    with pytest.raises(StoreError):
        await asyncio.to_thread(store.read_sync, "SELECT 1")
