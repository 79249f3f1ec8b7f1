"""C-FIND identifier → SQL (pure). Semantics of each rule are checked by running the
generated condition on a throw-away in-memory table; the store-level behaviour is in
test_find.py."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from node.pacs.matching import InfoModel, build_query, build_retrieve_query
from node.pacs.response import response_charset, response_dataset
from node.pacs.qr_attributes import ATTRS, Kind, QueryLevel
from node.pacs.value_match import (IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS, Key, MatchError,
                                   glob_pattern, key_clause, like_pattern)
from node.store.sqlite_backend import migrate
from tests.qr_helpers import ident

PR, SR = InfoModel.PATIENT_ROOT, InfoModel.STUDY_ROOT


def matches(kind: Kind, query: str, stored: list[str]) -> list[str]:
    """Which stored values a query value selects, per the generated SQL condition."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (v TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [(s,) for s in stored])
    clause = key_clause(Key("v", kind, "Test"), query.split("\\"))
    if clause is None:
        sql, params = "SELECT v FROM t", []
    else:
        sql, params = f"SELECT v FROM t WHERE {clause[0]}", clause[1]
    return sorted(r[0] for r in db.execute(sql, params))


def failure(identifier: Dataset, model: InfoModel | str = PR) -> MatchError:
    with pytest.raises(MatchError) as info:
        build_query(identifier, model)
    return info.value


# -- value rules ---------------------------------------------------------------------
def test_single_value_text_is_exact_and_case_sensitive() -> None:
    assert matches(Kind.TEXT, "CT", ["CT", "ct", "CTX", ""]) == ["CT"]


def test_person_name_is_case_insensitive_exact_or_wildcard() -> None:
    names = ["Smith^John", "SMITH^JOHN", "Smithson^Al", "smith^jane"]
    assert matches(Kind.PN, "smith^john", names) == ["SMITH^JOHN", "Smith^John"]
    assert matches(Kind.PN, "SMITH*", names) == sorted(names)
    assert matches(Kind.PN, "smith^j???", names) == ["SMITH^JOHN", "Smith^John", "smith^jane"]


def test_wildcards_star_and_question_mark() -> None:
    stored = ["ABC", "AXC", "AC", "ABBC", "abc"]
    assert matches(Kind.TEXT, "A?C", stored) == ["ABC", "AXC"]
    assert matches(Kind.TEXT, "A*C", stored) == ["ABBC", "ABC", "AC", "AXC"]


@pytest.mark.parametrize("kind", [Kind.TEXT, Kind.PN])
def test_sql_pattern_characters_in_a_query_are_literal(kind: Kind) -> None:
    stored = ["A%B", "AXB", "A_B", "A!B", "A[1]B", "A1B"]
    assert matches(kind, "A%*", stored) == ["A%B"]
    assert matches(kind, "A_*", stored) == ["A_B"]
    assert matches(kind, "A!*", stored) == ["A!B"]
    assert matches(kind, "A[1]*", stored) == ["A[1]B"]
    assert matches(kind, "A%B", stored) == ["A%B"]


def test_pattern_translation() -> None:
    assert glob_pattern("A[*]?") == "A[[]*]?"
    assert like_pattern("5%_!*?") == "5!%!_!!%_"


def test_universal_matching_empty_or_lone_star() -> None:
    stored = ["A", "", "B"]
    assert matches(Kind.TEXT, "", stored) == sorted(stored)
    assert matches(Kind.UID, "*", ["1.2"]) == ["1.2"]
    assert key_clause(Key("v", Kind.DATE, "StudyDate"), ["*"]) is None


def test_list_of_uids_and_multiple_values() -> None:
    stored = ["1.2.3", "1.2.4", "1.2.5"]
    assert matches(Kind.UID, "1.2.3\\1.2.5", stored) == ["1.2.3", "1.2.5"]
    assert matches(Kind.TEXT, "CT\\M?", ["CT", "MR", "US"]) == ["CT", "MR"]


@pytest.mark.parametrize("bad", ["1.2.*", "1.2.3a", "1." + "2" * 70, "1..2"])
def test_malformed_uid_is_refused(bad: str) -> None:
    with pytest.raises(MatchError, match="StudyInstanceUID: not a valid UID"):
        build_query(ident("STUDY", StudyInstanceUID=bad), SR)


DATES = ["20231231", "20240101", "20240115", "20240131", "20240201", ""]


@pytest.mark.parametrize("query,expected", [
    ("20240115", ["20240115"]),
    ("20240101-20240131", ["20240101", "20240115", "20240131"]),
    ("20240131-", ["20240131", "20240201"]),
    ("-20240101", ["20231231", "20240101"]),
    ("20240115\\20240201", ["20240115", "20240201"]),
])
def test_date_single_and_ranges(query: str, expected: list[str]) -> None:
    assert matches(Kind.DATE, query, DATES) == expected


TIMES = ["083000", "101459.999", "1015", "101500", "101530.25", "101559.999999",
         "101600", "235959", ""]


@pytest.mark.parametrize("query,expected", [
    ("101500-101530", ["101500", "101530.25"]),      # HHMMSS upper bound covers fractions
    ("1015-1015", ["101500", "101530.25", "101559.999999"]),
    ("1016-", ["101600", "235959"]),
    ("-0830", ["083000"]),
    ("101530.25-101530.3", ["101530.25"]),
    ("1015", ["101500", "101530.25", "101559.999999"]),  # a partial time names a period
    ("083000", ["083000"]),
])
def test_time_single_and_ranges(query: str, expected: list[str]) -> None:
    assert matches(Kind.TIME, query, TIMES) == expected


def test_datetime_ranges_ignore_offsets_and_pad_partial_values() -> None:
    stored = ["20231231235959", "20240101000000", "20240115120000.5", "20240201080000"]
    assert matches(Kind.DATETIME, "202401-202401", stored) == stored[1:3]
    assert matches(Kind.DATETIME, "20240115-", stored) == stored[2:]
    assert matches(Kind.DATETIME, "-2023", stored) == stored[:1]
    assert matches(Kind.DATETIME, "20240115120000.5+0100", stored) == stored[2:3]
    assert matches(Kind.DATETIME, "20240115-0500", stored) == stored[2:3]   # offset, no range


@pytest.mark.parametrize("keyword,value,needle", [
    ("StudyDate", "2024-13-40", "StudyDate: expected YYYYMMDD"),
    ("StudyDate", "20241340", "StudyDate: not a calendar date"),
    ("StudyDate", "20240131-20240101", "StudyDate: range starts after it ends"),
    ("StudyDate", "-", "StudyDate: expected YYYYMMDD"),
    ("StudyDate", "2024", "StudyDate: expected YYYYMMDD"),
    ("PatientBirthDate", "19700230", "PatientBirthDate: not a calendar date"),
    ("StudyTime", "2500", "StudyTime: expected HHMMSS"),
    ("StudyTime", "10:15:00", "StudyTime: expected HHMMSS"),
    ("StudyTime", "1200-1000", "StudyTime: range starts after it ends"),
    ("NumberOfStudyRelatedInstances", "1*", "expected a whole number"),
    ("NumberOfStudyRelatedSeries", "two", "expected a whole number"),
])
def test_malformed_values_name_the_key_but_not_the_value(keyword: str, value: str,
                                                         needle: str) -> None:
    err = failure(ident("STUDY", **{keyword: value}))
    assert needle in err.reason
    assert len(value) < 3 or value not in err.reason
    assert err.status == UNABLE_TO_PROCESS
    assert err.tag == tag_for_keyword(keyword)
    assert len(err.reason) <= 64


def test_every_value_error_fits_an_error_comment() -> None:
    """ErrorComment is LO (64 characters): each attribute's messages fit whole."""
    bad = {Kind.TEXT: None, Kind.PN: None, Kind.UID: "1.x", Kind.DATE: "2024-13-40",
           Kind.TIME: "2500-", Kind.DATETIME: "2024-13-", Kind.INT: "x"}
    for attr in ATTRS:
        value = bad[attr.kind]
        if value is None or dictionary_VR(attr.tag) == "US":   # binary: cannot be bad text
            continue
        for level in ("IMAGE", "STUDY"):
            try:
                build_query(ident(level, **{attr.keyword: value}), PR)
            except MatchError as err:
                assert len(err.reason) <= 64 and attr.keyword in err.reason, err.reason
            else:
                raise AssertionError(f"{attr.keyword}={value!r} was accepted")


def test_datetime_malformed() -> None:
    with pytest.raises(MatchError, match=r"expected YYYYMMDD\[HHMMSS\]"):
        key_clause(Key("v", Kind.DATETIME, "AcquisitionDateTime"), ["2024-01-01"])
    with pytest.raises(MatchError, match="not a calendar date"):
        key_clause(Key("v", Kind.DATETIME, "AcquisitionDateTime"), ["202413"])


# -- identifier structure ------------------------------------------------------------
@pytest.mark.parametrize("identifier,model,needle", [
    (ident(None, PatientID="X"), PR, "QueryRetrieveLevel (0008,0052) is missing"),
    (ident("FRAME"), PR, "must be PATIENT, STUDY, SERIES or IMAGE"),
    (ident("PATIENT"), SR, "does not exist in the Study Root model"),
    (ident("STUDY"), "MODALITY_WORKLIST", "unknown query/retrieve information model"),
    (ident("STUDY", SeriesInstanceUID="1.2.3"), PR, "SeriesInstanceUID is below the STUDY"),
    (ident("PATIENT", StudyDate="20240101"), PR, "StudyDate is below the PATIENT"),
    (ident("SERIES", SOPClassUID="1.2"), SR, "SOPClassUID is below the SERIES"),
])
def test_structural_errors_say_identifier_does_not_match(identifier: Dataset, model: str,
                                                         needle: str) -> None:
    err = failure(identifier, model)
    assert needle in err.reason and len(err.reason) <= 64
    assert err.status == IDENTIFIER_MISMATCH


def test_lower_level_return_key_without_value_is_returned_empty() -> None:
    q = build_query(ident("STUDY", SeriesDescription="", StudyDate=""), SR)
    by_tag = {k.tag: k for k in q.keys}
    assert by_tag[tag_for_keyword("SeriesDescription")].column is None
    assert by_tag[tag_for_keyword("StudyDate")].column is not None


def test_patient_keys_are_study_level_in_study_root() -> None:
    q = build_query(ident("STUDY", PatientName="A*", NumberOfPatientRelatedStudies=""), SR)
    assert "pp.name LIKE ?" in q.sql
    err = failure(ident("PATIENT", PatientName="A*"), SR)
    assert err.status == IDENTIFIER_MISMATCH


def _unique_tags(model: InfoModel, level: str) -> set[str]:
    q = build_query(ident(level), model)
    names = {"PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
    return {n for n in names if tag_for_keyword(n) in {k.tag for k in q.keys}}


@pytest.mark.parametrize("model,level,expected", [
    (PR, "PATIENT", {"PatientID"}),
    (PR, "STUDY", {"PatientID", "StudyInstanceUID"}),
    (PR, "IMAGE", {"PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}),
    (SR, "STUDY", {"StudyInstanceUID"}),
    (SR, "SERIES", {"StudyInstanceUID", "SeriesInstanceUID"}),
    (SR, "IMAGE", {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}),
])
def test_unique_keys_of_the_level_and_above_are_always_returned(
        model: InfoModel, level: str, expected: set[str]) -> None:
    assert _unique_tags(model, level) == expected


def test_query_values_are_bound_never_spliced() -> None:
    q = build_query(ident("STUDY", StudyDescription="x' OR 1=1 --",
                          PatientName="O'Brien*"), SR)
    assert "O'Brien" not in q.sql and "1=1" not in q.sql
    assert "x' OR 1=1 --" in q.params and "O'Brien%" in q.params


def test_limit_fetches_one_extra_row_to_detect_truncation() -> None:
    q = build_query(ident("STUDY"), SR, limit=7)
    assert q.params[-1] == 8 and q.sql.endswith("LIMIT ?")


def test_every_catalogued_attribute_builds() -> None:
    """Each attribute is matchable at the lowest level with a universal and a value."""
    sample = {Kind.TEXT: "A*", Kind.PN: "A*", Kind.UID: "1.2", Kind.DATE: "20240101-",
              Kind.TIME: "1000-", Kind.DATETIME: "2024-", Kind.INT: "3"}
    for attr in ATTRS:
        q = build_query(ident("IMAGE", **{attr.keyword: sample[attr.kind]}), PR)
        assert any(k.tag == attr.tag and k.column is not None for k in q.keys), attr.keyword
        db = sqlite3.connect(":memory:")
        migrate(db)
        db.execute(q.sql, q.params).fetchall()   # valid SQL against the real schema


# -- retrieve identifiers ------------------------------------------------------------
@pytest.mark.parametrize("identifier,model,needle", [
    (ident("STUDY"), SR, "StudyInstanceUID is required for a STUDY level retrieve"),
    (ident("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID=""), SR,
     "SeriesInstanceUID is required"),
    (ident("IMAGE", SOPInstanceUID="*"), SR, "wildcards are not allowed"),
    (ident("PATIENT", PatientID="PID*"), PR, "PatientID must be a single value"),
    (ident("PATIENT", PatientID="A\\B"), PR, "PatientID must be a single value"),
    (ident("PATIENT", PatientID="A"), SR, "does not exist in the Study Root model"),
])
def test_retrieve_identifier_errors(identifier: Dataset, model: InfoModel,
                                    needle: str) -> None:
    with pytest.raises(MatchError) as info:
        build_retrieve_query(identifier, model)
    assert needle in info.value.reason
    assert info.value.status == IDENTIFIER_MISMATCH


def test_retrieve_matches_unique_keys_only() -> None:
    sql, params = build_retrieve_query(
        ident("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3\\1.2.4",
              Modality="CT"), SR)
    assert params == ("1.2", "1.2.3", "1.2.4")
    assert "modality" not in sql.split("WHERE")[1]


# -- responses -----------------------------------------------------------------------
def test_response_has_every_requested_key_level_and_retrieve_ae() -> None:
    identifier = ident("STUDY", PatientName="", StudyDate="", ModalitiesInStudy="",
                       NumberOfStudyRelatedSeries="", PatientAge="",
                       ReferencedStudySequence=[])
    q = build_query(identifier, SR)
    row = []
    for key in q.keys:   # a fake row: a distinct plausible value per column
        if key.column is not None:
            row.append({Kind.PN: "Doe^Jane", Kind.DATE: "20240102", Kind.TEXT: "CT\\MR",
                        Kind.INT: 4, Kind.UID: "1.2.3"}[key.kind])   # type: ignore[index]
    ds = response_dataset(q, tuple(row), "NODE_AE")
    assert ds.QueryRetrieveLevel == "STUDY" and ds.RetrieveAETitle == "NODE_AE"
    assert str(ds.PatientName) == "Doe^Jane" and ds.StudyDate == "20240102"
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert ds.NumberOfStudyRelatedSeries == 4
    assert ds.StudyInstanceUID == "1.2.3"
    assert "PatientAge" in ds and ds.PatientAge in ("", None)
    assert "ReferencedStudySequence" in ds and len(ds.ReferencedStudySequence) == 0
    assert "SpecificCharacterSet" not in ds


def test_private_keys_are_dropped_from_the_response() -> None:
    identifier = ident("STUDY")
    identifier.add_new(0x00091010, "LO", "x")
    q = build_query(identifier, SR)
    assert 0x00091010 not in {k.tag for k in q.keys}


def test_response_character_set() -> None:
    assert response_charset(None, ["Smith"]) is None
    assert response_charset("ISO_IR 100", ["Smith"]) == "ISO_IR 100"
    assert response_charset("ISO_IR 100", ["Müller"]) == "ISO_IR 100"
    assert response_charset("ISO_IR 100", ["Дмитрий"]) == "ISO_IR 192"
    assert response_charset(None, ["Müller"]) == "ISO_IR 192"
    assert response_charset(["", "ISO 2022 IR 144"], ["Дмитрий"]) == ["", "ISO 2022 IR 144"]


def test_levels_are_ordered() -> None:
    assert [lv.depth for lv in QueryLevel] == [0, 1, 2, 3]
    assert SR.levels() == (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)


def test_reading_and_answering_never_logs_query_values(
        caplog: "pytest.LogCaptureFixture") -> None:
    """pydicom's own validation warnings quote values; our path must not trigger them."""
    birth, name = "1970023O", "Canary" * 12 + "*"      # bad DA; PN longer than 64 chars
    identifier = ident("STUDY", "ISO_IR 192", PatientBirthDate="", PatientName=name,
                       StudyDescription="Ω" * 70, NumberOfStudyRelatedSeries="*")
    with caplog.at_level(logging.DEBUG):
        q = build_query(identifier, SR)
        row = tuple("Canary" * 20 if k.kind is Kind.PN else None for k in q.keys
                    if k.column is not None)
        response_dataset(q, row, "AE")
        with pytest.raises(MatchError):
            build_query(ident("STUDY", PatientBirthDate=birth), SR)
        with pytest.raises(MatchError):   # pydicom's IS conversion would log this value
            build_query(ident("STUDY", NumberOfStudyRelatedSeries="Canary"), SR)
    assert "Canary" not in caplog.text and birth not in caplog.text and "Ω" not in caplog.text
