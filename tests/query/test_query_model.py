"""The federated query model (JSON, C-FIND, validation) and the merge of site answers: pure."""

from __future__ import annotations

from datetime import date

import pytest
from pydicom.dataset import Dataset

from node.deid.actions import pseudonym
from node.net.roster import Member
from node.query.fanout import AnswerError, SiteAnswer, parse_answer
from node.query.merge import merge_counts, merge_patients
from node.query.model import FederatedQuery, QueryError

KEY = b"k" * 32


def _member(name: str) -> Member:
    return Member(name.encode().hex().ljust(64, "0"), name, b"", b"", "127.0.0.1:1",
                  "127.0.0.1:1", name.upper())


def test_json_round_trip_keeps_every_field() -> None:
    q = FederatedQuery(patient_pseudonym=pseudonym("MRN1", "", KEY), modality="CT",
                       body_part="CHEST", study_date_from=date(2020, 1, 1),
                       study_date_to=date(2021, 12, 31), description="lung", sex="F",
                       age_min=40, age_max=70, level="series", limit=50)
    doc = q.to_json()
    assert doc["study_date_from"] == "2020-01-01" and "patient_id" not in doc
    assert FederatedQuery.from_json(doc) == q
    import json
    assert FederatedQuery.from_json(json.dumps(doc)) == q


@pytest.mark.parametrize("doc, words", [
    ({"modality": "ct"}, "modality"),
    ({"level": "image"}, "level"),
    ({"limit": 0}, "limit"),
    ({"limit": "10"}, "limit"),
    ({"study_date_from": "2020-13-01"}, "YYYY-MM-DD"),
    ({"study_date_from": "2021-01-01", "study_date_to": "2020-01-01"}, "after"),
    ({"age_min": 80, "age_max": 20}, "age_min"),
    ({"sex": "X"}, "sex"),
    ({"patient_pseudonym": "MRN0001234"}, "PSN-"),
    ({"issuer": "HOSP"}, "issuer needs patient_id"),
    ({"patient_name": "A\\B"}, "patient_name"),
    ({"colour": "red"}, "unknown query field"),
    ({"modality": 3}, "modality must be text"),
])
def test_bad_json_gets_an_actionable_error(doc: dict, words: str) -> None:
    with pytest.raises(QueryError, match=words):
        FederatedQuery.from_json(doc)


def test_not_an_object_is_refused() -> None:
    for bad in ("[1, 2]", "{not json", 42):
        with pytest.raises(QueryError):
            FederatedQuery.from_json(bad)  # type: ignore[arg-type]


def test_patient_id_becomes_the_pseudonym_before_leaving_home() -> None:
    q = FederatedQuery(patient_id="MRN0000007", issuer="HOSP-A", modality="MR")
    wire = q.for_federation(KEY)
    assert wire.patient_id is None and wire.issuer is None
    assert wire.patient_pseudonym == pseudonym("MRN0000007", "HOSP-A", KEY)
    assert "MRN0000007" not in str(wire.to_json()) and wire.modality == "MR"
    assert FederatedQuery(modality="CT").for_federation(KEY) == FederatedQuery(modality="CT")


def test_from_cfind_maps_the_identifier() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "MRN0000042"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientName = "DOE*"
    ds.ModalitiesInStudy = ["CT", "PT"]
    ds.BodyPartExamined = "CHEST"
    ds.StudyDate = "20200101-20201231"
    ds.StudyDescription = "*LUNG*"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = ""
    q = FederatedQuery.from_cfind(ds)
    assert (q.patient_id, q.issuer, q.patient_name, q.modality, q.body_part) == (
        "MRN0000042", "HOSP", "DOE*", "CT", "CHEST")
    assert (q.study_date_from, q.study_date_to) == (date(2020, 1, 1), date(2020, 12, 31))
    assert (q.description, q.sex, q.level) == ("LUNG", "F", "study")


def test_from_cfind_universal_keys_are_not_filters() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.PatientID = "*"
    ds.Modality = "MR"
    ds.StudyDate = "20210305"
    q = FederatedQuery.from_cfind(ds)
    assert q.patient_id is None and q.modality == "MR" and q.level == "series"
    assert q.study_date_from == q.study_date_to == date(2021, 3, 5)
    with pytest.warns(UserWarning):
        ds.StudyDate = "2021-03"
    with pytest.raises(QueryError, match="StudyDate"):
        FederatedQuery.from_cfind(ds)
    ds.StudyDate = ""
    ds.QueryRetrieveLevel = "IMAGE"
    with pytest.raises(QueryError, match="IMAGE"):
        FederatedQuery.from_cfind(ds)


def _ok(site: str, rows: list[dict], counts: dict) -> SiteAnswer:
    return SiteAnswer(_member(site), "ok", 1.0, "deidentified", rows, counts)


def test_merge_groups_by_pseudonym_and_dedupes_studies() -> None:
    shared = {"patient": "PSN-A", "study_uid": "2.25.1"}
    answers = [
        _ok("north", [shared, {"patient": "PSN-B", "study_uid": "2.25.2"}], {}),
        _ok("south", [{"patient": "PSN-A", "study_uid": "2.25.3"}, dict(shared)], {}),
        _ok("east", [{"patient": "PSN-A", "study_uid": "2.25.4"}], {}),
        SiteAnswer(_member("west"), "timeout", 5000.0),
    ]
    merged = merge_patients(answers)
    assert [p.pseudonym for p in merged] == ["PSN-A", "PSN-B"]
    a = merged[0]
    assert a.sites == ["east", "north", "south"]
    by_uid = {r["study_uid"]: r["sites"] for r in a.records}
    assert by_uid == {"2.25.1": ["north", "south"], "2.25.3": ["south"], "2.25.4": ["east"]}


def test_merge_counts_keeps_suppressed_as_lower_bound() -> None:
    answers = [
        _ok("north", [], {"patients": 12, "studies": 20, "series": 40}),
        SiteAnswer(_member("south"), "ok", 1.0, "count", [],
                   {"patients": "<5", "studies": 7, "series": "<5"}),
        SiteAnswer(_member("east"), "denied", 1.0, reason="no"),
    ]
    counts = merge_counts(answers)
    assert counts["patients"].display() == ">= 13" and not counts["patients"].exact
    assert counts["studies"].display() == "27" and counts["studies"].exact
    assert counts["series"].lower_bound == 41


def test_parse_answer_refuses_bad_shapes() -> None:
    site = _member("north")
    assert parse_answer(site, {"level": "count", "counts": {"patients": "<5"}}, 1.0).status == "ok"
    for bad in ({"level": "everything"}, {"level": "deidentified", "rows": "x"},
                {"level": "deidentified", "rows": [{"no": "patient"}]},
                {"level": "count", "counts": {"patients": True}}):
        with pytest.raises(AnswerError):
            parse_answer(site, bad, 1.0)
