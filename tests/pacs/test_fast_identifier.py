"""The fast C-FIND identifier reader gives exactly what pydicom gives (the SCP's
decoding: read, then every element converted) for what it accepts, and hands
everything else back (None) so pydicom reads it as before."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node.pacs import codec
from node.pacs.fast_identifier import EXPLICIT_LE, IMPLICIT_LE, parse
from node.pacs.identifier import (charset_of, element_terms, element_vr, key_tags,
                                  level_text)
from node.pacs.matching import InfoModel, build_query
from node.pacs.value_match import MatchError

TEXT_KEYS = ["QueryRetrieveLevel", "PatientID", "PatientName",
             "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate",
             "StudyTime", "AccessionNumber", "ModalitiesInStudy", "Modality",
             "StudyDescription", "ReferringPhysicianName", "PatientBirthDate",
             "StudyID", "PatientSex", "RetrieveAETitle", "InstanceAvailability"]
NUMBER_KEYS = ["NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "SeriesNumber",
               "InstanceNumber", "NumberOfPatientRelatedStudies", "SliceThickness"]
_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
_values = st.lists(_value, min_size=0, max_size=3).map(lambda vs: "\\".join(vs))
TS = [IMPLICIT_LE, EXPLICIT_LE]
CHARSETS = [None, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO_IR 13", "GB18030",
            "ISO_IR 100\\ISO 2022 IR 87"]


def _pydicom(raw: bytes, ts: str) -> Dataset:
    """What DicomService._identifier does."""
    ds = codec.decode(raw, ts)
    _ = [ds[t] for t in ds.keys()]
    return ds


def _view(ident) -> tuple:  # type: ignore[no-untyped-def]
    tags = list(key_tags(ident))
    return (tags, [element_vr(ident, t) for t in tags], [element_terms(ident, t) for t in tags],
            charset_of(ident), level_text(ident))


def _query(ident) -> tuple:  # type: ignore[no-untyped-def]
    try:
        q = build_query(ident, InfoModel.STUDY_ROOT)
    except MatchError as exc:
        return ("refused", exc.reason, exc.status)
    return (q.level, q.sql, q.params, q.keys, q.charset)


def _encode(ds: Dataset, ts: str) -> bytes:
    return codec.encode(ds, ts)


@settings(max_examples=300, deadline=None)
@given(keys=st.dictionaries(st.sampled_from(TEXT_KEYS), _values, max_size=8),
       charset=st.sampled_from(CHARSETS), ts=st.sampled_from(TS),
       numbers=st.sets(st.sampled_from(NUMBER_KEYS), max_size=3))
def test_accepted_identifiers_read_as_pydicom_reads_them(keys: dict[str, str],
                                                         charset: str | None, ts: str,
                                                         numbers: set[str]) -> None:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    for kw, value in keys.items():
        setattr(ds, kw, value)
    for kw in numbers:           # empty return keys
        setattr(ds, kw, None)
    raw = _encode(ds, ts)
    fast = parse(raw, ts)
    reference = _pydicom(raw, ts)
    if fast is None:  # only an unusual character set is handed back among these
        assert charset is not None and charset.strip() not in ("", "ISO_IR 6", "ISO_IR 100",
                                                               "ISO_IR 192")
        return
    assert _view(fast) == _view(reference)
    assert _query(fast) == _query(reference)


def test_typical_findscu_identifier_is_read_fast() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "PAT 1"
    ds.StudyInstanceUID = ""
    ds.StudyDate = ""
    ds.PatientName = ""
    ds.NumberOfStudyRelatedInstances = None   # an empty IS return key, as findscu -k sends it
    for ts in TS:
        fast = parse(_encode(ds, ts), ts)
        assert fast is not None
        assert _query(fast) == _query(_pydicom(_encode(ds, ts), ts))


def test_a_query_of_a_known_shape_takes_the_prepared_statement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from node.pacs import matching
    monkeypatch.setattr(matching, "_SHAPES", {})
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = "SHAPE-1"
    ds.StudyInstanceUID = ""
    first = build_query(parse(_encode(ds, IMPLICIT_LE), IMPLICIT_LE), InfoModel.STUDY_ROOT)
    ds.PatientID = "SHAPE-2"
    second = build_query(parse(_encode(ds, IMPLICIT_LE), IMPLICIT_LE), InfoModel.STUDY_ROOT)
    assert second.sql is first.sql  # the same statement object, from the cache
    assert second.params == ("SHAPE-2", 10001)
    assert any(q.sql is first.sql for q in matching._SHAPES.values())


def _unusual() -> list[tuple[str, Dataset]]:
    cases = []
    seq = Dataset()
    seq.QueryRetrieveLevel = "STUDY"
    seq.ReferencedStudySequence = Sequence([Dataset()])
    cases.append(("sequence", seq))
    num = Dataset()
    num.QueryRetrieveLevel = "SERIES"
    num.SeriesNumber = "3"
    cases.append(("IS number", num))
    priv = Dataset()
    priv.QueryRetrieveLevel = "STUDY"
    priv.add_new(0x00091010, "LO", "x")
    cases.append(("private", priv))
    latin = Dataset()
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.QueryRetrieveLevel = "STUDY"
    latin.PatientName = "M\u00fcller"
    cases.append(("non-ASCII value", latin))
    jis = Dataset()
    jis.SpecificCharacterSet = "ISO_IR 13"
    jis.QueryRetrieveLevel = "STUDY"
    cases.append(("other character set", jis))
    return cases


@pytest.mark.parametrize("ts", TS)
@pytest.mark.parametrize("case", _unusual(), ids=lambda c: c[0])
def test_unusual_identifiers_fall_back_to_pydicom(case: tuple[str, Dataset], ts: str) -> None:
    assert parse(_encode(case[1], ts), ts) is None


@pytest.mark.parametrize("raw", [
    b"\x08\x00\x52\x00\x10\x00\x00\x00STUDY ",                 # length past the end
    b"\x10\x00\x20\x00\x02\x00\x00\x00P1\x08\x00\x52\x00\x06\x00\x00\x00STUDY ",  # order
    b"\x08\x00\x52\x00\x06\x00",                                 # truncated header
    b"\x08\x00\x52\x00\xff\xff\xff\xffSTUDY ",                  # undefined length
])
def test_malformed_bytes_fall_back(raw: bytes) -> None:
    assert parse(raw, IMPLICIT_LE) is None


def test_explicit_vr_that_differs_from_the_dictionary_falls_back() -> None:
    raw = struct.pack("<HH2sH", 0x0010, 0x0020, b"SH", 2) + b"P1"
    assert parse(raw, EXPLICIT_LE) is None
    assert parse(raw.replace(b"SH", b"LO"), EXPLICIT_LE) is not None


def test_other_transfer_syntaxes_fall_back() -> None:
    assert parse(b"", "1.2.840.10008.1.2.1.99") is None
    assert parse(b"", "1.2.840.10008.1.2.2") is None


_shape_values = st.sampled_from(["", "A", "B*", "*", "x\\y", "Doe^J", "CT", "1.2.3",
                                 "20200101", "20200101-", "3", "a?c"])


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.dictionaries(st.sampled_from(TEXT_KEYS + ["SeriesNumber"]),
                                     _shape_values, max_size=6), min_size=1, max_size=4),
       level=st.sampled_from(["STUDY", "SERIES", "IMAGE", "PATIENT"]))
def test_the_statement_cache_gives_what_a_fresh_translation_gives(
        keys: list[dict[str, str]], level: str) -> None:
    from node.pacs.matching import level_of, translate
    for one in keys:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for kw, value in one.items():
            if kw == "SeriesNumber" and not value.isdigit():
                continue  # pydicom cannot hold it (the matcher's own tests cover that)
            if kw != "QueryRetrieveLevel":
                setattr(ds, kw, value)
        ident = _pydicom(_encode(ds, IMPLICIT_LE), IMPLICIT_LE)
        try:
            fresh = translate(ident, InfoModel.STUDY_ROOT,
                              level_of(ident, InfoModel.STUDY_ROOT), 10000)
        except MatchError as exc:
            with pytest.raises(MatchError) as raised:
                build_query(ident, InfoModel.STUDY_ROOT)
            assert raised.value.reason == exc.reason
            continue
        for _ in range(2):  # the second one comes from the cache
            assert build_query(ident, InfoModel.STUDY_ROOT) == fresh
