"""The flat query paths (issue 12) give the same matches as the plain semantics.

A synthetic archive (``node.synth.metadata``, the rows a C-STORE commits) is loaded
once; every optimised path (stored pseudonym, count columns, study->modality table,
modality + date, availability from counts, constant-time totals) is compared with an
answer computed in Python from the base tables alone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from pydicom.dataset import Dataset

from node.deid.actions import pseudonym
from node.pacs.find import find
from node.pacs.matching import InfoModel
from node.policy import Level
from node.query.model import FederatedQuery
from node.query.serve_sql import run_query
from node.store.db import MetadataStore, StoredFile
from node.synth.metadata import fill_store
from tests.qr_helpers import ident
from tests.store_backends import open_store

pytestmark = pytest.mark.asyncio(loop_scope="module")
SR, PR = InfoModel.STUDY_ROOT, InfoModel.PATIENT_ROOT
LINK = b"k" * 32
UIDK = b"u" * 32


@dataclass
class World:
    """The base tables, read back plainly (no count columns, no helper tables)."""

    patients: dict[int, tuple[str, str, str]]          # id -> pid, issuer, name
    studies: dict[int, tuple[str, int, str]]           # id -> uid, patient id, date
    series: dict[int, tuple[str, int, str, str]]       # id -> uid, study id, modality, part
    instances: dict[int, list[bool]]                   # series id -> has-file flags

    def study_modalities(self, study: int) -> set[str]:
        return {m for _, s, m, _ in self.series.values() if s == study and m}

    def study_instances(self, study: int) -> int:
        return sum(len(self.instances.get(i, [])) for i, v in self.series.items() if v[1] == study)


async def read_world(store: MetadataStore) -> World:
    patients = {int(i): (str(p), str(s), str(n)) for i, p, s, n in await store.fetchall(
        "SELECT patient_id, pid, issuer, name FROM patient_phi")}
    studies = {int(i): (str(u), int(p), str(d)) for i, u, p, d in await store.fetchall(
        "SELECT id, study_uid, patient_id, study_date FROM studies")}
    series = {int(i): (str(u), int(s), str(m), str(b)) for i, u, s, m, b in await store.fetchall(
        "SELECT id, series_uid, study_id, modality, body_part FROM series")}
    instances: dict[int, list[bool]] = defaultdict(list)
    for sid, path in await store.fetchall("SELECT series_id, path FROM instances"):
        instances[int(sid)].append(path is not None)
    return World(patients, studies, series, dict(instances))


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[tuple[MetadataStore, World]]:
    async with open_store(request.param, tmp_path_factory.mktemp("scale"), request) as store:
        await fill_store(store, 6000, seed=3)
        # a few instances with a local file: their study/series are (partly) ONLINE
        uid = str((await store.fetchone("SELECT sop_uid FROM instances ORDER BY id LIMIT 1"))[0])
        await store.write(lambda conn: conn.execute(
            "UPDATE instances SET path=?, size=?, sha256=? WHERE sop_uid=?",
            ("x/y.dcm", 1234, "0" * 64, uid)))
        yield store, await read_world(store)


async def ask(store: MetadataStore, model: InfoModel, level: str, **keys: object) -> list[Dataset]:
    return [ds async for ds in find(store, ident(level, **keys), model, retrieve_ae="T")]


async def test_totals_and_count_columns_match_the_rows(world: tuple[MetadataStore, World]) -> None:
    store, w = world
    counts = await store.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances, counts.bytes) == (
        len(w.patients), len(w.studies), len(w.series),
        sum(len(v) for v in w.instances.values()), 1234)
    rows = await ask(store, SR, "STUDY", NumberOfStudyRelatedSeries="",
                     NumberOfStudyRelatedInstances="", InstanceAvailability="")
    by_uid = {s[0]: i for i, s in w.studies.items()}
    assert len(rows) == len(w.studies)
    for ds in rows:
        sid = by_uid[ds.StudyInstanceUID]
        flags = [f for i, v in w.series.items() if v[1] == sid for f in w.instances.get(i, [])]
        assert int(ds.NumberOfStudyRelatedSeries) == sum(1 for v in w.series.values()
                                                         if v[1] == sid)
        assert int(ds.NumberOfStudyRelatedInstances) == len(flags)
        assert ds.InstanceAvailability == ("ONLINE" if flags and all(flags) else "NEARLINE")


async def test_modalities_in_study_with_and_without_a_month(
        world: tuple[MetadataStore, World]) -> None:
    store, w = world
    rows = await ask(store, SR, "STUDY", ModalitiesInStudy="CT", StudyDate="")
    expected = {u for i, (u, _, _) in w.studies.items() if "CT" in w.study_modalities(i)}
    assert expected and {ds.StudyInstanceUID for ds in rows} == expected
    month = sorted(d for _, _, d in w.studies.values())[len(w.studies) // 2][:6]
    rows = await ask(store, SR, "STUDY", ModalitiesInStudy="MR\\CT",
                     StudyDate=f"{month}01-{month}28")
    expected = {u for i, (u, _, d) in w.studies.items()
                if f"{month}01" <= d <= f"{month}28" and w.study_modalities(i) & {"CT", "MR"}}
    assert {ds.StudyInstanceUID for ds in rows} == expected
    for ds in rows:
        sid = next(i for i, s in w.studies.items() if s[0] == ds.StudyInstanceUID)
        assert set(ds.ModalitiesInStudy if isinstance(ds.ModalitiesInStudy, list)
                   else [ds.ModalitiesInStudy]) == w.study_modalities(sid)
    # the probe of study_modalities repeats the date condition on its copy of the date:
    # open ranges, single dates and lists of dates match as on the study itself
    # (dates of CT studies, so each value below has matches whatever the generator drew)
    dates = sorted({d for i, (_, _, d) in w.studies.items() if d and "CT" in w.study_modalities(i)})
    day, later = dates[len(dates) // 2], dates[len(dates) // 2 + 3]
    for value, keep in ((f"-{day}", lambda d: d <= day), (f"{later}-", lambda d: d >= later),
                        (day, lambda d: d == day),
                        (f"{day}\\{later}", lambda d: d in (day, later))):
        rows = await ask(store, SR, "STUDY", ModalitiesInStudy="CT", StudyDate=value)
        expected = {u for i, (u, _, d) in w.studies.items()
                    if d and keep(d) and "CT" in w.study_modalities(i)}
        assert expected and {ds.StudyInstanceUID for ds in rows} == expected, value


@pytest.mark.parametrize("world", ["postgresql"], indirect=True)
async def test_postgresql_sessions_never_jit_compile(world: tuple[MetadataStore, World]) -> None:
    """JIT starts above a plan cost; without statistics the cost of a 2-row lookup can
    pass it and compiling took ~22 ms of a 32 ms pseudonym query at 10^6 instances.
    (PostgreSQL only: SQLite has no JIT.)"""
    store, _w = world
    assert store.dialect.postgres
    assert (await store.fetchone("SHOW jit"))[0] == "off"
    assert await store.write(lambda conn: conn.execute("SHOW jit").fetchone()[0]) == "off"


async def test_patient_name_wildcard_and_counts_at_patient_level(
        world: tuple[MetadataStore, World]) -> None:
    store, w = world
    # the commonest 3-letter name prefix of this archive, asked in lower case
    stem = Counter(n[:3].upper() for _, _, n in w.patients.values()).most_common(1)[0][0]
    rows = await ask(store, PR, "PATIENT", PatientName=f"{stem.lower()}*",
                     NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="")
    expected = {p for p, _, n in w.patients.values() if n.upper().startswith(stem)}
    assert expected and {ds.PatientID for ds in rows} == expected
    by_pid = {p: i for i, (p, _, _) in w.patients.items()}
    for ds in rows:
        studies = [i for i, s in w.studies.items() if s[1] == by_pid[ds.PatientID]]
        assert int(ds.NumberOfPatientRelatedStudies) == len(studies)
        assert int(ds.NumberOfPatientRelatedInstances) == sum(w.study_instances(i) for i in studies)


async def test_series_by_modality_with_instance_counts(world: tuple[MetadataStore, World]) -> None:
    store, w = world
    rows = await ask(store, SR, "SERIES", Modality="US", NumberOfSeriesRelatedInstances="")
    expected = {u: len(w.instances.get(i, [])) for i, (u, _, m, _) in w.series.items() if m == "US"}
    assert expected and {ds.SeriesInstanceUID: int(ds.NumberOfSeriesRelatedInstances)
                         for ds in rows} == expected


def fed(**kw: object) -> FederatedQuery:
    return FederatedQuery.from_json(kw)


async def test_federated_pseudonym_and_modality_month(world: tuple[MetadataStore, World]) -> None:
    store, w = world
    pid, issuer, _ = next(iter(w.patients.values()))
    psn = pseudonym(pid, issuer, LINK)
    got = await run_query(store, fed(patient_pseudonym=psn, level="study"), Level.DEIDENTIFIED,
                          linkage_key=LINK, uid_key=UIDK, threshold=0)
    pat = next(i for i, v in w.patients.items() if v[0] == pid)
    assert got.counts["studies"] == sum(1 for s in w.studies.values() if s[1] == pat)
    assert {r["patient"] for r in got.rows} == {psn} and len(got.rows) == got.counts["studies"]
    # every level and the identified answer (PostgreSQL: the patient-first plan shape)
    mine = [i for i, (_, s, _, _) in w.series.items() if w.studies[s][1] == pat]
    for level, answer in (("series", Level.DEIDENTIFIED), ("patient", Level.DEIDENTIFIED),
                          ("series", Level.IDENTIFIED)):
        got = await run_query(store, fed(patient_pseudonym=psn, level=level), answer,
                              linkage_key=LINK, uid_key=UIDK, threshold=0)
        assert got.counts["series"] == len(mine) and {r["patient"] for r in got.rows} == {psn}
        assert len(got.rows) == (len(mine) if level == "series" else 1)
        if answer is Level.IDENTIFIED:
            assert {r["series_uid_real"] for r in got.rows} == {w.series[i][0] for i in mine}
            assert {r["patient_id"] for r in got.rows} == {pid}
    month = sorted(d for _, _, d in w.studies.values())[len(w.studies) // 3][:6]
    q = fed(modality="CT", study_date_from=f"{month[:4]}-{month[4:]}-01",
            study_date_to=f"{month[:4]}-{month[4:]}-28", level="series")
    got = await run_query(store, q, Level.DEIDENTIFIED, linkage_key=LINK, uid_key=UIDK,
                          threshold=0)
    series = [i for i, (_, s, m, _) in w.series.items()
              if m == "CT" and f"{month}01" <= w.studies[s][2] <= f"{month}28"]
    assert got.counts["series"] == len(series)
    assert got.counts["studies"] == len({w.series[i][1] for i in series})
    assert sorted(r["instances"] for r in got.rows) == sorted(len(w.instances.get(i, []))
                                                              for i in series)


async def test_pseudonyms_follow_a_new_linkage_key(world: tuple[MetadataStore, World]) -> None:
    store, w = world
    other = b"o" * 32
    await store.ensure_pseudonyms(other)
    stored = {str(p) for (p,) in await store.fetchall("SELECT pseudonym FROM patients")}
    assert stored == {pseudonym(p, i, other) for p, i, _ in w.patients.values()}
    await store.ensure_pseudonyms(LINK)   # back, for the other tests of this module
    stored = {str(p) for (p,) in await store.fetchall("SELECT pseudonym FROM patients")}
    assert stored == {pseudonym(p, i, LINK) for p, i, _ in w.patients.values()}


async def test_synthetic_rows_have_the_shape_of_an_archive(
        world: tuple[MetadataStore, World]) -> None:
    _store, w = world
    n = sum(len(v) for v in w.instances.values())
    assert n == 6000
    assert 3.5 <= 1000 * len(w.patients) / n <= 8 and 8 <= 1000 * len(w.studies) / n <= 15
    assert 17 <= 1000 * len(w.series) / n <= 30
