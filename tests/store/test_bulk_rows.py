"""Many path-less instances at once (``MetadataWriter.ingest_pathless``: synth, upstream
sync) write the same rows and counts as one ``ingest_rows`` per instance, and the count
columns stay right through multi-row updates and deletes (PostgreSQL keeps them with
statement-level triggers, SQLite per row), on both stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.store.db import MetadataStore
from node.synth.metadata import archive_records
from tests.store_backends import KINDS, open_store

COUNTS = {
    "patients": "SELECT pp.pid, p.num_studies, p.num_series, p.num_instances, p.num_local "
                "FROM patients p JOIN patient_phi pp ON pp.patient_id = p.id",
    "studies": "SELECT study_uid, study_date, num_series, num_instances, num_local FROM studies",
    "series": "SELECT series_uid, modality, study_date, num_instances, num_local FROM series",
    "modalities": "SELECT st.study_uid, sm.modality, sm.study_date, sm.num_series FROM "
                  "study_modalities sm JOIN studies st ON st.id = sm.study_id",
    "totals": "SELECT name, value FROM totals",
}
ROWS = ("SELECT i.sop_uid, se.series_uid, i.sop_class_uid, i.instance_number, "
        "i.transfer_syntax, i.rows, i.columns, i.position_z, i.path, i.size, i.source "
        "FROM instances i JOIN series se ON se.id = i.series_id")
# the same counts recomputed from the base rows alone
TRUTH = {
    "studies": "SELECT st.study_uid, st.study_date, "
               "(SELECT count(*) FROM series se WHERE se.study_id = st.id), "
               "(SELECT count(*) FROM instances i JOIN series se ON se.id = i.series_id "
               " WHERE se.study_id = st.id), "
               "(SELECT count(*) FROM instances i JOIN series se ON se.id = i.series_id "
               " WHERE se.study_id = st.id AND i.path IS NOT NULL) FROM studies st",
    "series": "SELECT se.series_uid, se.modality, se.study_date, "
              "(SELECT count(*) FROM instances i WHERE i.series_id = se.id), "
              "(SELECT count(*) FROM instances i WHERE i.series_id = se.id AND i.path IS NOT NULL) "
              "FROM series se",
}


async def snapshot(store: MetadataStore) -> dict[str, list[tuple[object, ...]]]:
    out = {name: sorted(tuple(r) for r in await store.fetchall(sql))
           for name, sql in COUNTS.items()}
    out["rows"] = sorted(tuple(r) for r in await store.fetchall(ROWS))
    return out


async def truth(store: MetadataStore) -> dict[str, list[tuple[object, ...]]]:
    return {name: sorted(tuple(r) for r in await store.fetchall(sql))
            for name, sql in TRUTH.items()}


@pytest.mark.parametrize("kind", KINDS)
async def test_bulk_rows_equal_row_by_row(kind: str, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    records = list(archive_records(900, seed=5))
    records.insert(300, records[10])          # a duplicate within one batch ...
    async with open_store(kind, tmp_path / "a", request) as one, \
            open_store(kind, tmp_path / "b", request) as bulk:
        for rec in records:
            await one.ingest(rec, None, "synthetic")
        new = 0
        for start in range(0, len(records), 137):
            new += await bulk.ingest_many(records[start:start + 137], "synthetic")
        new += await bulk.ingest_many(records[:50], "synthetic")   # ... and a stored one
        assert new == 900
        assert await snapshot(bulk) == await snapshot(one)
        assert (await bulk.counts()).instances == 900


@pytest.mark.parametrize("kind", KINDS)
async def test_counts_follow_multi_row_updates_and_deletes(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with open_store(kind, tmp_path, request) as store:
        await store.ingest_many(list(archive_records(700, seed=9)), "synthetic")
        await store.run_in_transaction([
            ("UPDATE instances SET path = 'f/' || sop_uid, size = 100 "
             "WHERE instance_number % 3 = 0", ()),
            ("UPDATE instances SET size = 150 WHERE instance_number % 6 = 0", ()),
            ("DELETE FROM instances WHERE instance_number % 5 = 0", ()),
            ("UPDATE instances SET path = NULL WHERE instance_number % 9 = 0", ()),
        ])
        got, want = await snapshot(store), await truth(store)
        assert [r[:5] for r in got["studies"]] == want["studies"]
        assert [r[:5] for r in got["series"]] == want["series"]
        rows = await store.fetchall("SELECT path, size FROM instances")
        counts = await store.counts()
        assert counts.instances == len(rows)
        assert counts.bytes == sum(int(s) for p, s in rows if p is not None) > 0
