"""C-FIND and retrieve selection against real stores (SQLite and PostgreSQL) filled
through ingest.

Expected answers are computed from the WORLD description below, never written out,
so a change of the fixture changes the expectations with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pydicom.dataset import Dataset

from node.pacs.find import InstanceRow, find, select_instances
from node.pacs.matching import InfoModel, build_query
from node.pacs.value_match import IDENTIFIER_MISMATCH, MatchError
from node.store.db import MetadataStore, StoredFile
from node.store.records import record_from_dataset
from tests.qr_helpers import ident
from tests.store_backends import KINDS, open_store
from node.store.postgres_backend import pg_sql

PR, SR = InfoModel.PATIENT_ROOT, InfoModel.STUDY_ROOT
AE_TITLE = "MEDFED_TEST"
TS = "1.2.840.10008.1.2.1"
ROOT = "1.2.826.0.1.3680043.10.543"
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
             "US": "1.2.840.10008.5.1.4.1.1.6.1"}
SIZE = {"CT": 512, "MR": 256, "US": 480}


@dataclass(frozen=True)
class Pat:
    pid: str
    name: str
    birth: str
    sex: str


@dataclass(frozen=True)
class Ser:
    modality: str
    body_part: str
    number: int
    instances: int
    offline: tuple[int, ...] = ()      # instance numbers stored without a local file


@dataclass(frozen=True)
class Stu:
    key: int
    patient: str
    date: str
    time: str
    accession: str
    description: str
    series: tuple[Ser, ...]

    @property
    def uid(self) -> str:
        return f"{ROOT}.1.{self.key}"

    def series_uid(self, s: Ser) -> str:
        return f"{ROOT}.2.{self.key}.{s.number}"

    def sop_uid(self, s: Ser, n: int) -> str:
        return f"{ROOT}.3.{self.key}.{s.number}.{n}"


PATIENTS = {
    "p1": Pat("PID-001", "Smith^John", "19700101", "M"),
    "p2": Pat("PID_002", "smith^jane", "19851231", "F"),
    "p3": Pat("PID%003", "O'Brien^Ann", "20000229", "F"),
    "p4": Pat("PIDX002", "Müller^Hans", "19600505", "M"),
    "p5": Pat("PID-005", "Test_Case%^Zed", "19900101", "O"),
    "p6": Pat("PID-006", "TestXCaseQ^Zed", "19900102", "M"),
}
WORLD = (
    Stu(1, "p1", "20240115", "083000", "ACC1", "CT CHEST",
        (Ser("CT", "CHEST", 1, 3), Ser("MR", "CHEST", 2, 2))),
    Stu(2, "p1", "20240220", "142530.5", "ACC[1]", "MR BRAIN", (Ser("MR", "HEAD", 1, 2),)),
    Stu(3, "p2", "20231231", "235959", "ACC%4", "CT ABDOMEN",
        (Ser("CT", "ABDOMEN", 1, 1, offline=(1,)),)),
    Stu(4, "p3", "20240301", "1015", "ACCX4", "US", (Ser("US", "ABDOMEN", 1, 1),)),
    Stu(5, "p4", "20240115", "", "ACC5", "CT HEAD", (Ser("CT", "HEAD", 3, 1),)),
    Stu(6, "p5", "20220606", "120000", "ACC_6", "MIXED",
        (Ser("CT", "CHEST", 1, 2, offline=(2,)),)),
    Stu(7, "p6", "20220607", "120001", "ACCX6", "MR KNEE", (Ser("MR", "KNEE", 1, 1),)),
)


def instance_dataset(st: Stu, se: Ser, n: int) -> Dataset:
    p = PATIENTS[st.patient]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = (
        p.pid, p.name, p.birth, p.sex)
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = st.uid, st.date, st.time
    ds.AccessionNumber, ds.StudyDescription, ds.StudyID = st.accession, st.description, "1"
    ds.SeriesInstanceUID, ds.Modality, ds.BodyPartExamined = (
        st.series_uid(se), se.modality, se.body_part)
    ds.SeriesNumber, ds.SeriesDescription = se.number, f"{se.modality} {se.body_part}"
    ds.SOPInstanceUID, ds.SOPClassUID = st.sop_uid(se, n), SOP_CLASS[se.modality]
    ds.InstanceNumber, ds.Rows, ds.Columns = n, SIZE[se.modality], SIZE[se.modality]
    return ds


def rel_path(st: Stu, se: Ser, n: int) -> str:
    return f"{st.uid}/{st.series_uid(se)}/{st.sop_uid(se, n)}.dcm"


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataStore]:
    """The same world in an SQLite file and in a PostgreSQL database."""
    async with open_store(request.param, tmp_path, request) as db:
        for st in WORLD:
            for se in st.series:
                for n in range(1, se.instances + 1):
                    stored = None if n in se.offline else StoredFile(
                        rel_path(st, se, n), 1000 + n, f"{n:064x}")
                    await db.ingest(record_from_dataset(instance_dataset(st, se, n), TS),
                                    stored)
        yield db


async def ask(store: MetadataStore, model: InfoModel, level: str, **keys: object
              ) -> list[Dataset]:
    return [ds async for ds in find(store, ident(level, **keys), model,
                                    retrieve_ae=AE_TITLE)]


async def study_uids(store: MetadataStore, model: InfoModel = SR, **keys: object) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in await ask(store, model, "STUDY", **keys)}


def uids(studies: object) -> set[str]:
    return {st.uid for st in studies}  # type: ignore[attr-defined]


def values(value: object) -> list[str]:
    """A multi-valued element's values (pydicom gives a str for one value)."""
    return [value] if isinstance(value, str) else [str(v) for v in value]  # type: ignore[attr-defined]


def patient_of(st: Stu) -> Pat:
    return PATIENTS[st.patient]


# -- matching rules at the study level -----------------------------------------------
async def test_universal_query_returns_every_study(store: MetadataStore) -> None:
    assert await study_uids(store, StudyDate="", PatientName="") == uids(WORLD)


async def test_single_value_and_uid_list(store: MetadataStore) -> None:
    assert await study_uids(store, AccessionNumber="ACC1") == uids(WORLD[:1])
    assert await study_uids(store, AccessionNumber="acc1") == set()    # LO is case-sensitive
    wanted = [WORLD[1], WORLD[4]]
    assert await study_uids(store, StudyInstanceUID=[s.uid for s in wanted]) == uids(wanted)


async def test_person_name_case_insensitive_exact_and_wildcard(store: MetadataStore) -> None:
    exact = [s for s in WORLD if patient_of(s).name.lower() == "smith^john"]
    assert await study_uids(store, PatientName="SMITH^JOHN") == uids(exact)
    smiths = [s for s in WORLD if patient_of(s).name.lower().startswith("smith")]
    assert await study_uids(store, PatientName="smith*") == uids(smiths)
    assert len({patient_of(s).pid for s in smiths}) == 2
    assert await study_uids(store, PatientName="Smith^J?hn") == uids(exact)


async def test_percent_and_underscore_in_queries_are_literal(store: MetadataStore) -> None:
    """p5 'Test_Case%' and p6 'TestXCaseQ' would both match if _ or % were wildcards."""
    p5 = [s for s in WORLD if s.patient == "p5"]
    assert await study_uids(store, PatientName="test_case%*") == uids(p5)
    assert await study_uids(store, PatientName="test?case*") == uids(
        [s for s in WORLD if s.patient in ("p5", "p6")])
    assert await study_uids(store, AccessionNumber="ACC%*") == uids(
        [s for s in WORLD if s.accession.startswith("ACC%")])
    assert await study_uids(store, AccessionNumber="ACC_*") == uids(
        [s for s in WORLD if s.accession.startswith("ACC_")])
    assert await study_uids(store, AccessionNumber="ACC[1]*") == uids(
        [s for s in WORLD if s.accession.startswith("ACC[1]")])
    assert await study_uids(store, PatientID="PID_00*") == uids(
        [s for s in WORLD if patient_of(s).pid.startswith("PID_00")])


async def test_apostrophe_in_a_name_is_just_a_value(store: MetadataStore) -> None:
    assert await study_uids(store, PatientName="o'brien^ann") == uids(
        [s for s in WORLD if s.patient == "p3"])


@pytest.mark.parametrize("query,lo,hi", [
    ("20240101-20240229", "20240101", "20240229"),
    ("20240115-", "20240115", "99999999"),
    ("-20231231", "00000000", "20231231"),
    ("20240115", "20240115", "20240115"),
])
async def test_study_date_ranges(store: MetadataStore, query: str, lo: str, hi: str) -> None:
    expected = [s for s in WORLD if s.date and lo <= s.date <= hi]
    assert expected, "fixture must exercise the range"
    assert await study_uids(store, StudyDate=query) == uids(expected)


async def test_study_time_range_and_partial_single_time(store: MetadataStore) -> None:
    assert await study_uids(store, StudyTime="1200-1430") == uids(
        [s for s in WORLD if s.time and "120000" <= s.time.ljust(6, "0") <= "143059.999999"])
    assert await study_uids(store, StudyTime="142530-") == uids(
        [s for s in WORLD if s.time and s.time.ljust(6, "0") >= "142530"])
    assert await study_uids(store, StudyTime="1420") == set()
    assert await study_uids(store, StudyTime="1425") == uids(WORLD[1:2])


async def test_birth_date_range_at_patient_level(store: MetadataStore) -> None:
    rows = await ask(store, PR, "PATIENT", PatientBirthDate="19800101-19991231")
    assert {str(r.PatientID) for r in rows} == {
        p.pid for p in PATIENTS.values() if "19800101" <= p.birth <= "19991231"}


async def test_combined_keys_are_anded(store: MetadataStore) -> None:
    got = await study_uids(store, PatientName="smith*", StudyDate="20240201-")
    assert got == uids([s for s in WORLD if patient_of(s).name.lower().startswith("smith")
                        and s.date >= "20240201"])


# -- computed attributes -------------------------------------------------------------
async def test_modalities_in_study_matches_any_series_and_lists_all(
        store: MetadataStore) -> None:
    rows = await ask(store, SR, "STUDY", ModalitiesInStudy="MR")
    expected = [s for s in WORLD if any(se.modality == "MR" for se in s.series)]
    assert {str(r.StudyInstanceUID) for r in rows} == uids(expected)
    by_uid = {st.uid: st for st in WORLD}
    for r in rows:
        assert values(r.ModalitiesInStudy) == sorted(
            {se.modality for se in by_uid[str(r.StudyInstanceUID)].series})
    both = await study_uids(store, ModalitiesInStudy=["US", "CT"])
    assert both == uids([s for s in WORLD if {se.modality for se in s.series} & {"US", "CT"}])


async def test_study_counts_and_availability(store: MetadataStore) -> None:
    rows = await ask(store, SR, "STUDY", NumberOfStudyRelatedSeries="",
                     NumberOfStudyRelatedInstances="", InstanceAvailability="")
    assert len(rows) == len(WORLD)
    by_uid = {st.uid: st for st in WORLD}
    for r in rows:
        st = by_uid[str(r.StudyInstanceUID)]
        assert r.NumberOfStudyRelatedSeries == len(st.series)
        assert r.NumberOfStudyRelatedInstances == sum(se.instances for se in st.series)
        offline = any(se.offline for se in st.series)
        assert r.InstanceAvailability == ("NEARLINE" if offline else "ONLINE")


async def test_patient_level_counts(store: MetadataStore) -> None:
    rows = await ask(store, PR, "PATIENT", PatientName="", NumberOfPatientRelatedStudies="",
                     NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")
    assert {str(r.PatientID) for r in rows} == {p.pid for p in PATIENTS.values()}
    for r in rows:
        key = next(k for k, p in PATIENTS.items() if p.pid == r.PatientID)
        studies = [s for s in WORLD if s.patient == key]
        assert str(r.PatientName) == PATIENTS[key].name
        assert r.NumberOfPatientRelatedStudies == len(studies)
        assert r.NumberOfPatientRelatedSeries == sum(len(s.series) for s in studies)
        assert r.NumberOfPatientRelatedInstances == sum(
            se.instances for s in studies for se in s.series)


async def test_matching_on_a_count(store: MetadataStore) -> None:
    assert await study_uids(store, NumberOfStudyRelatedSeries="2") == uids(
        [s for s in WORLD if len(s.series) == 2])


# -- each level, both models ---------------------------------------------------------
@pytest.mark.parametrize("model", [PR, SR])
async def test_study_level_return_keys(store: MetadataStore, model: InfoModel) -> None:
    st = WORLD[0]
    rows = await ask(store, model, "STUDY", StudyInstanceUID=st.uid, PatientName="",
                     StudyDate="", StudyTime="", StudyDescription="", AccessionNumber="",
                     ReferringPhysicianName="", PatientAge="")
    assert len(rows) == 1
    r = rows[0]
    assert str(r.PatientName) == patient_of(st).name and r.StudyDate == st.date
    assert r.StudyTime == st.time and r.StudyDescription == st.description
    assert r.AccessionNumber == st.accession
    assert "ReferringPhysicianName" in r and not r.ReferringPhysicianName
    assert "PatientAge" in r and not r.PatientAge                 # unsupported key: empty
    assert r.QueryRetrieveLevel == "STUDY" and r.RetrieveAETitle == AE_TITLE
    assert ("PatientID" in r) == (model is PR)                    # unique key above STUDY
    if model is PR:
        assert r.PatientID == patient_of(st).pid


@pytest.mark.parametrize("model", [PR, SR])
async def test_series_level(store: MetadataStore, model: InfoModel) -> None:
    st = WORLD[0]
    keys: dict[str, object] = {"StudyInstanceUID": st.uid, "Modality": "",
                               "SeriesNumber": "", "BodyPartExamined": "",
                               "SeriesDescription": "", "NumberOfSeriesRelatedInstances": "",
                               "InstanceAvailability": ""}
    if model is PR:
        keys["PatientID"] = patient_of(st).pid
    rows = await ask(store, model, "SERIES", **keys)
    assert [str(r.SeriesInstanceUID) for r in rows] == [st.series_uid(se) for se in st.series]
    for r, se in zip(rows, st.series):
        assert r.Modality == se.modality and r.SeriesNumber == se.number
        assert r.BodyPartExamined == se.body_part
        assert r.SeriesDescription == f"{se.modality} {se.body_part}"
        assert r.NumberOfSeriesRelatedInstances == se.instances
        assert r.InstanceAvailability == "ONLINE"
        assert r.StudyInstanceUID == st.uid and r.QueryRetrieveLevel == "SERIES"
    ct = await ask(store, model, "SERIES", StudyInstanceUID=st.uid, Modality="CT")
    assert [str(r.SeriesInstanceUID) for r in ct] == [
        st.series_uid(se) for se in st.series if se.modality == "CT"]


async def test_series_number_and_higher_level_keys_at_series_level(
        store: MetadataStore) -> None:
    rows = await ask(store, SR, "SERIES", SeriesNumber="3", PatientName="*")
    expected = [(s, se) for s in WORLD for se in s.series if se.number == 3]
    assert [str(r.SeriesInstanceUID) for r in rows] == [s.series_uid(se) for s, se in expected]
    assert str(rows[0].PatientName) == patient_of(expected[0][0]).name


@pytest.mark.parametrize("model", [PR, SR])
async def test_image_level(store: MetadataStore, model: InfoModel) -> None:
    st, se = WORLD[5], WORLD[5].series[0]
    rows = await ask(store, model, "IMAGE", StudyInstanceUID=st.uid,
                     SeriesInstanceUID=st.series_uid(se), SOPInstanceUID="", SOPClassUID="",
                     InstanceNumber="", Rows="", Columns="", InstanceAvailability="",
                     NumberOfFrames="")
    assert [str(r.SOPInstanceUID) for r in rows] == [
        st.sop_uid(se, n) for n in range(1, se.instances + 1)]
    for n, r in enumerate(rows, start=1):
        assert r.SOPClassUID == SOP_CLASS[se.modality] and r.InstanceNumber == n
        assert r.Rows == SIZE[se.modality] and r.Columns == SIZE[se.modality]
        assert r.InstanceAvailability == ("NEARLINE" if n in se.offline else "ONLINE")
        assert "NumberOfFrames" in r and r.NumberOfFrames in (None, "")
        assert ("PatientID" in r) == (model is PR)
    one = await ask(store, model, "IMAGE", SOPInstanceUID=st.sop_uid(se, 2), Rows="")
    assert len(one) == 1 and one[0].SeriesInstanceUID == st.series_uid(se)


async def test_patient_level_wildcard_on_patient_id(store: MetadataStore) -> None:
    rows = await ask(store, PR, "PATIENT", PatientID="PID-00?", PatientSex="")
    expected = {p.pid: p.sex for p in PATIENTS.values() if p.pid.startswith("PID-00")}
    assert {str(r.PatientID): r.PatientSex for r in rows} == expected


async def test_non_ascii_names_and_character_sets(store: MetadataStore) -> None:
    """ASCII letters fold case, 'ü' must match as written; the answer is in the
    requested character set, or UTF-8 when none was given and a value needs it."""
    cases = (("ISO_IR 100", "mü*", "ISO_IR 100"), ("ISO_IR 192", "MÜ*", None),
             ("ISO_IR 192", "mü*", "ISO_IR 192"), (None, "M?LLER*", "ISO_IR 192"))
    for charset, query, answer in cases:
        rows = [ds async for ds in find(store, ident("PATIENT", charset, PatientName=query),
                                        PR, retrieve_ae=AE_TITLE)]
        if answer is None:
            assert rows == []
            continue
        assert [str(r.PatientName) for r in rows] == [PATIENTS["p4"].name]
        assert rows[0].SpecificCharacterSet == answer


# -- malformed requests and limits ---------------------------------------------------
async def test_malformed_identifier_raises_before_any_result(store: MetadataStore) -> None:
    gen = find(store, ident("STUDY", StudyDate="2024-13-40"), SR, retrieve_ae=AE_TITLE)
    with pytest.raises(MatchError, match="StudyDate"):
        await gen.__anext__()
    with pytest.raises(MatchError) as info:
        await ask(store, PR, "STUDY", SeriesInstanceUID=WORLD[0].series_uid(
            WORLD[0].series[0]))
    assert info.value.status == IDENTIFIER_MISMATCH
    assert (await store.counts()).studies == len(WORLD)    # store untouched and usable


async def test_limit_truncates_and_logs_without_phi(store: MetadataStore,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medfed.find"):
        rows = [ds async for ds in find(store, ident("STUDY", PatientName="*"), SR,
                                        retrieve_ae=AE_TITLE, limit=3)]
    assert len(rows) == 3
    assert "truncated" in caplog.text
    assert not any(p.name.split("^")[0] in caplog.text for p in PATIENTS.values())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medfed.find"):
        rows = [ds async for ds in find(store, ident("STUDY"), SR, retrieve_ae=AE_TITLE,
                                        limit=len(WORLD))]
    assert len(rows) == len(WORLD) and "truncated" not in caplog.text


async def test_ingest_while_an_answer_is_streaming(store: MetadataStore) -> None:
    """A slow C-FIND consumer must not block or break C-STORE on the shared connection."""
    gen = find(store, ident("IMAGE", SOPInstanceUID=""), SR, retrieve_ae=AE_TITLE)
    first = await gen.__anext__()
    extra = Stu(99, "p1", "20250101", "090000", "ACC99", "LATE", (Ser("CT", "CHEST", 1, 1),))
    await store.ingest(record_from_dataset(
        instance_dataset(extra, extra.series[0], 1), TS), None)
    rest = [ds async for ds in gen]
    total = sum(se.instances for st in WORLD for se in st.series)
    assert len(rest) + 1 >= total and first.SOPInstanceUID != rest[0].SOPInstanceUID
    assert (await store.counts()).instances == total + 1


async def test_queries_use_indexes(store: MetadataStore) -> None:
    """The tables a selective query starts from are searched by index, not scanned."""
    cases = [("STUDY", {"AccessionNumber": "ACC1"}, "sp"),
             ("STUDY", {"PatientName": "smi*"}, "pp"),
             ("STUDY", {"StudyDate": "20240101-20240131"}, "st"),
             ("SERIES", {"StudyInstanceUID": WORLD[0].uid}, "st"),
             ("IMAGE", {"SeriesInstanceUID": WORLD[0].series_uid(WORLD[0].series[0])}, "se")]
    for level, keys, alias in cases:
        q = build_query(ident(level, **keys), SR, dialect=store.dialect)
        if store.url is None:
            plan = " | ".join(str(r[3]) for r in await store.fetchall(
                "EXPLAIN QUERY PLAN " + q.sql, q.params))
            assert f"SEARCH {alias} USING" in plan, plan
            continue
        # PostgreSQL scans tables this small whatever the indexes; forbid that, and
        # the plan shows whether an index can serve the condition at all
        with psycopg.connect(store.url, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")
            lines = [str(r[0]) for r in conn.execute("EXPLAIN " + pg_sql(q.sql), q.params)]
        mine = [ln for ln in lines if re.search(rf"\bon \w+ {alias}\b", ln)]
        assert mine and all("Index" in ln or "Bitmap Heap" in ln for ln in mine), "\n".join(lines)


# -- retrieve selection --------------------------------------------------------------
def rows_for(studies: list[tuple[Stu, Ser]]) -> list[str]:
    return [st.sop_uid(se, n) for st, se in studies for n in range(1, se.instances + 1)]


async def test_select_instances_by_study_list(store: MetadataStore) -> None:
    wanted = [WORLD[0], WORLD[2]]
    got = await select_instances(store, ident("STUDY", StudyInstanceUID=[s.uid for s in wanted]),
                                 SR)
    assert [r.sop_uid for r in got] == rows_for([(s, se) for s in wanted for se in s.series])
    nearline = [r for r in got if r.path is None]
    assert [r.sop_uid for r in nearline] == [
        s.sop_uid(se, n) for s in wanted for se in s.series for n in se.offline]
    first = got[0]
    st, se = WORLD[0], WORLD[0].series[0]
    assert first == InstanceRow(st.sop_uid(se, 1), SOP_CLASS["CT"], TS, rel_path(st, se, 1),
                                1001, st.series_uid(se), st.uid)


async def test_select_instances_by_series_and_image(store: MetadataStore) -> None:
    st = WORLD[0]
    mr = st.series[1]
    got = await select_instances(store, ident("SERIES", StudyInstanceUID=st.uid,
                                              SeriesInstanceUID=st.series_uid(mr)), SR)
    assert [r.sop_uid for r in got] == rows_for([(st, mr)])
    wrong_study = await select_instances(store, ident(
        "SERIES", StudyInstanceUID=WORLD[1].uid, SeriesInstanceUID=st.series_uid(mr)), SR)
    assert wrong_study == []                      # unique keys above must agree
    sops = [st.sop_uid(st.series[0], 2), st.sop_uid(mr, 1)]
    got = await select_instances(store, ident("IMAGE", SOPInstanceUID=sops), PR)
    assert sorted(r.sop_uid for r in got) == sorted(sops)


async def test_select_instances_by_patient_id(store: MetadataStore) -> None:
    got = await select_instances(store, ident("PATIENT", PatientID="PID_002"), PR)
    expected = [(s, se) for s in WORLD if patient_of(s).pid == "PID_002" for se in s.series]
    assert [r.sop_uid for r in got] == rows_for(expected)
    assert await select_instances(store, ident("PATIENT", PatientID="pid_002"), PR) == []


async def test_select_instances_malformed(store: MetadataStore) -> None:
    with pytest.raises(MatchError, match="StudyInstanceUID is required"):
        await select_instances(store, ident("STUDY", StudyInstanceUID=""), SR)
    with pytest.raises(MatchError, match="PatientID must be a single value"):
        await select_instances(store, ident("PATIENT", PatientID="PID*"), PR)
