"""C-FIND response identifiers encoded from their row: the bytes must be exactly what
the Dataset path (response_dataset + codec.encode) writes, for every attribute the node
answers, at every level, in both uncompressed little-endian syntaxes (pure)."""

from __future__ import annotations

import random

import pytest
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from node.pacs import codec
from node.pacs.matching import InfoModel, build_query
from node.pacs.qr_attributes import ATTRS, Kind, QueryLevel
from node.pacs.response import response_dataset
from node.pacs.response_wire import ResponseRow, RowEncoder, encode_row
from tests.qr_helpers import ident

SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

_VALUES: dict[Kind, list[object]] = {
    Kind.TEXT: ["CT", "CT\\MR", "ABC", "", None, "HOSPITAL ONE", "ONLINE"],
    Kind.PN: ["Doe^Jane", "Smith^J", "", None, "A^B^C^D^E"],
    Kind.UID: ["1.2.3", "1.2.34", "1.2.840.10008.5.1.4.1.1.2", None],
    Kind.DATE: ["20240102", "", None],
    Kind.TIME: ["101500", "1015", "", None],
    Kind.DATETIME: ["20240102101500", None],
    Kind.INT: [0, 4, 512, 65535, None],
}


def _keys(level: QueryLevel, model: InfoModel) -> dict[str, str]:
    return {a.keyword: "" for a in ATTRS
            if model.level_of(a).depth <= level.depth or a.keyword == "InstanceAvailability"}


def _rows(query, rng: random.Random, n: int):  # type: ignore[no-untyped-def]
    for _ in range(n):
        yield tuple(rng.choice(_VALUES[k.kind]) for k in query.keys  # type: ignore[index]
                    if k.column is not None)


@pytest.mark.parametrize("model", list(InfoModel))
def test_row_bytes_equal_the_dataset_path_at_every_level(model: InfoModel) -> None:
    rng = random.Random(7)
    for level in model.levels():
        for charset in (None, "ISO_IR 100", "ISO_IR 192"):
            identifier = ident(str(level), charset, **_keys(level, model),
                               ReferencedStudySequence=[], PatientAge="")
            query = build_query(identifier, model)
            for row in _rows(query, rng, 40):
                for ts in SYNTAXES:
                    fast = encode_row(query, row, "NODE_AE", ts)
                    assert fast is not None, (level, row)
                    assert fast == codec.encode(response_dataset(query, row, "NODE_AE"), ts)


def test_non_ascii_values_utf8_or_the_dataset_path() -> None:
    q = build_query(ident("STUDY", None, PatientName="", StudyDescription="",
                          StudyInstanceUID=""), InfoModel.STUDY_ROOT)
    for row in (("Müller^Jürgen", "Ω study", "1.2.3"), ("Дмитрий^Иван", "x", "1.2")):
        for ts in SYNTAXES:
            fast = encode_row(q, row, "AE", ts)
            assert fast is not None            # answered in UTF-8 (ISO_IR 192)
            assert fast == codec.encode(response_dataset(q, row, "AE"), ts)
    latin = build_query(ident("STUDY", "ISO_IR 100", PatientName="", StudyInstanceUID=""),
                        InfoModel.STUDY_ROOT)
    row = ("Müller^Jürgen", "1.2.3")
    assert encode_row(latin, row, "AE", ExplicitVRLittleEndian) is None   # Dataset path
    for ts in (*SYNTAXES, DeflatedExplicitVRLittleEndian):
        assert ResponseRow(latin, row, "AE").encode(ts) == codec.encode(
            response_dataset(latin, row, "AE"), ts)


def test_response_row_dataset_is_the_response_dataset() -> None:
    q = build_query(ident("STUDY", None, StudyDate="", StudyInstanceUID=""),
                    InfoModel.STUDY_ROOT)
    ds = ResponseRow(q, ("20240102", "1.2.3"), "AE").dataset()
    assert ds.StudyDate == "20240102" and ds.RetrieveAETitle == "AE"


def test_a_value_the_vr_cannot_carry_is_sent_empty() -> None:
    """(The Dataset path cannot write it at all: the SCP would drop the whole match.)"""
    q = build_query(ident("IMAGE", None, Rows="", SOPInstanceUID=""), InfoModel.STUDY_ROOT)
    row = tuple(70000 if k.kind is Kind.INT else "1.2.3" for k in q.keys if k.column is not None)
    raw = encode_row(q, row, "AE", ExplicitVRLittleEndian)
    assert raw is not None
    ds = codec.decode(raw, ExplicitVRLittleEndian)
    assert ds.SOPInstanceUID == "1.2.3" and ds["Rows"].value in (None, b"", [])


@pytest.mark.parametrize("model", list(InfoModel))
def test_the_per_query_template_gives_encode_rows_bytes(model: InfoModel) -> None:
    """RowEncoder (one template per query, made once) must write what encode_row
    writes for every row, including rows it hands back to encode_row (non-ASCII)."""
    rng = random.Random(11)
    odd = ["Müller^Jürgen", "Ω", "Дмитрий"]
    for level in model.levels():
        for charset in (None, "ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"]):
            identifier = ident(str(level), charset, **_keys(level, model),
                               ReferencedStudySequence=[], PatientAge="")
            query = build_query(identifier, model)
            encoder = RowEncoder(query, "NODE_AE")
            for i, row in enumerate(_rows(query, rng, 40)):
                if i % 5 == 0:   # some rows carry a non-ASCII name or text
                    row = tuple(rng.choice(odd) if isinstance(v, str) and v and rng.random()
                                < 0.3 else v for v in row)
                for ts in (*SYNTAXES, DeflatedExplicitVRLittleEndian):
                    raw = encode_row(query, row, "NODE_AE", ts)
                    assert encoder.encode(row, ts) == raw
                    if raw is not None:   # (else the Dataset path, the same for both)
                        assert ResponseRow(query, row, "NODE_AE", encoder).encode(ts) == raw


def test_the_template_sends_a_value_the_vr_cannot_carry_empty_as_encode_row_does() -> None:
    q = build_query(ident("IMAGE", None, Rows="", SOPInstanceUID=""), InfoModel.STUDY_ROOT)
    row = tuple(70000 if k.kind is Kind.INT else "1.2.3" for k in q.keys if k.column is not None)
    for ts in SYNTAXES:
        assert RowEncoder(q, "AE").encode(row, ts) == encode_row(q, row, "AE", ts)
