"""An existing node's store (schema version 1) is upgraded when the node opens it:
the count columns, totals and study->modality rows are filled from the old rows and
kept by triggers from then on (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from node.pacs.find import find
from node.pacs.matching import InfoModel
from node.store.db import MetadataStore, StoredFile
from node.store.postgres_backend import pg_sql
from node.store.records import InstanceRec, InstanceRecord, PatientRec, SeriesRec, StudyRec
from node.store.schema import SCHEMA, SCHEMA_VERSION
from node.store.schema_postgres import BASE
from tests.qr_helpers import ident
from tests.store_backends import KINDS, store_url

# version-1 rows as the old writer left them: 2 patients, 3 studies, 4 series, 7 instances
V1_ROWS: list[tuple[str, tuple[Any, ...]]] = [
    ("INSERT INTO meta(key, value) VALUES ('schema_version', '1'), ('patient_salt', ?)",
     ("ab" * 32,)),
    *[("INSERT INTO patients(id, patient_key, sex, created_at, updated_at) VALUES (?,?,?,1,1)",
       (i, f"key{i}", "F")) for i in (1, 2)],
    *[("INSERT INTO patient_phi(patient_id, pid, name) VALUES (?,?,?)", (i, f"P{i}", f"N{i}"))
      for i in (1, 2)],
    *[("INSERT INTO studies(id, study_uid, patient_id, study_date, created_at, updated_at) "
       "VALUES (?,?,?,?,1,1)", (s, f"1.2.{s}", p, d))
      for s, p, d in ((1, 1, "20240105"), (2, 1, "20240210"), (3, 2, "20240111"))],
    *[("INSERT INTO study_phi(study_id) VALUES (?)", (s,)) for s in (1, 2, 3)],
    *[("INSERT INTO series(id, series_uid, study_id, modality, last_instance_at, created_at) "
       "VALUES (?,?,?,?,1,1)", (se, f"1.2.{st}.{se}", st, m))
      for se, st, m in ((1, 1, "CT"), (2, 1, "MR"), (3, 2, "CT"), (4, 3, "US"))],
    *[("INSERT INTO series_phi(series_id) VALUES (?)", (se,)) for se in (1, 2, 3, 4)],
    *[("INSERT INTO instances(sop_uid, series_id, sop_class_uid, transfer_syntax, path, size, "
       "received_at) VALUES (?,?,'1.2.840.10008.5.1.4.1.1.2','1.2.840.10008.1.2.1',?,?,1)",
       (f"1.2.9.{n}", se, None if n == 7 else f"f{n}.dcm", 100))
      for n, se in ((1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4))],
]


def make_v1(kind: str, folder: Path, url: str | None) -> None:
    if kind == "sqlite":
        conn = sqlite3.connect(folder / "meta.sqlite")
        conn.executescript(SCHEMA)
        run: Callable[[str, tuple[Any, ...]], Any] = conn.execute
    else:
        pg = psycopg.connect(url, autocommit=True)  # type: ignore[arg-type]
        pg.execute(BASE)  # type: ignore[arg-type]
        conn = pg  # type: ignore[assignment]
        run = lambda sql, params: pg.execute(pg_sql(sql), params)  # noqa: E731
    for sql, params in V1_ROWS:
        run(sql, params)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_version_1_store_is_upgraded_at_open(kind: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    url = store_url(kind, request)
    make_v1(kind, tmp_path, url)
    async with MetadataStore(tmp_path / "meta.sqlite", url=url) as store:
        assert await store.schema_version() == SCHEMA_VERSION == 3
        counts = await store.counts()
        assert (counts.patients, counts.studies, counts.series, counts.instances,
                counts.bytes) == (2, 3, 4, 7, 600)
        rows = [ds async for ds in find(store, ident(
            "STUDY", ModalitiesInStudy="", NumberOfStudyRelatedInstances="",
            NumberOfStudyRelatedSeries="", InstanceAvailability=""),
            InfoModel.STUDY_ROOT, retrieve_ae="T")]
        got = {ds.StudyInstanceUID: (str(ds.ModalitiesInStudy), int(ds.NumberOfStudyRelatedSeries),
                                     int(ds.NumberOfStudyRelatedInstances),
                                     ds.InstanceAvailability) for ds in rows}
        assert got == {"1.2.1": ("['CT', 'MR']", 2, 3, "ONLINE"),
                       "1.2.2": ("CT", 1, 2, "ONLINE"),
                       "1.2.3": ("US", 1, 2, "NEARLINE")}
        # from now on the triggers keep them: one more instance with a file in study 3
        rec = InstanceRecord(PatientRec("P2"), StudyRec("1.2.3"), SeriesRec("1.2.3.4", "US"),
                             InstanceRec("1.2.9.8", "1.2.840.10008.5.1.4.1.1.2",
                                         "1.2.840.10008.1.2.1"))
        await store.ingest(rec, StoredFile("f8.dcm", 50, "0" * 64))
        assert (await store.counts()).instances == 8 and (await store.counts()).bytes == 650
    async with MetadataStore(tmp_path / "meta.sqlite", url=url) as store:  # opens again: no-op
        assert await store.schema_version() == 3 and (await store.counts()).instances == 8
