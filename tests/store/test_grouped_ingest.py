"""Relaxed (journalled) C-STORE commits of concurrent associations share transactions
(``MetadataWriter._ingest_grouped``): the rows and counts are those of one transaction
per instance, and an instance whose rows fail is undone alone, on both stores."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from node.store.writer import StoredFile, _Pending
from node.synth.metadata import archive_records
from tests.store.test_bulk_rows import snapshot, truth
from tests.store_backends import KINDS, open_store


def _stored(n: int) -> StoredFile:
    return StoredFile(f"f/{n}.dcm", 1000 + n, f"{n:064x}")


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_relaxed_ingests_equal_one_transaction_each(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    records = list(archive_records(240, seed=5))
    async with open_store(kind, tmp_path / "a", request) as one, \
            open_store(kind, tmp_path / "b", request) as grouped:
        for n, rec in enumerate(records):
            await one.ingest(rec, _stored(n), "local", [("publish", rec.series.uid, 30.0)])

        def sender(part: int) -> None:
            for n in range(part, len(records), 6):
                grouped.ingest_sync(records[n], _stored(n), "local",
                                    [("publish", records[n].series.uid, 30.0)],
                                    relaxed=True)
        threads = [threading.Thread(target=sender, args=(k,)) for k in range(6)]
        await asyncio.to_thread(lambda: ([t.start() for t in threads],
                                         [t.join() for t in threads]))
        assert await snapshot(grouped) == await snapshot(one)
        got, want = await snapshot(grouped), await truth(grouped)
        assert [r[:5] for r in got["series"]] == want["series"]
        jobs = "SELECT kind, ref, state FROM jobs ORDER BY ref"
        assert await grouped.fetchall(jobs) == await one.fetchall(jobs)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_failing_instance_in_a_group_is_undone_alone(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    records = list(archive_records(5, seed=3))
    async with open_store(kind, tmp_path, request) as store:
        batch = [_Pending(rec, _stored(n), "local", [("publish", rec.series.uid, 0.0)])
                 for n, rec in enumerate(records)]
        # its job row breaks a NOT NULL constraint after its instance row went in
        batch[2].jobs = [("publish", None, 0.0)]  # type: ignore[list-item]
        await asyncio.to_thread(store.writer._commit_group, batch)
        assert all(item.done for item in batch)
        assert batch[2].error is not None and batch[2].result is None
        assert all(item.error is None and item.result is not None
                   for n, item in enumerate(batch) if n != 2)
        stored = {uid for (uid,) in await store.fetchall("SELECT sop_uid FROM instances")}
        assert stored == {r.instance.sop_uid for n, r in enumerate(records) if n != 2}
        assert (await store.counts()).instances == 4
        got, want = await snapshot(store), await truth(store)
        assert [r[:5] for r in got["studies"]] == want["studies"]
        assert [r[:5] for r in got["series"]] == want["series"]
