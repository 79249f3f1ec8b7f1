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
