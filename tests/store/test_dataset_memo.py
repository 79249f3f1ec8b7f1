"""Remembered results of a dataset's repeated elements (``DatasetMemo``, the record and
validation memos of C-STORE ingest) are exactly what computing them gives: for every
instance of a series, for different values, character sets and encodings, for data
sets built in memory, and for the inputs that are refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from node.pacs import codec, status
from node.pacs.validate import InvalidInstance, ValidationMemo, validate_instance
from node.store.dataset_memo import DatasetMemo
from node.store.records import RecordMemo, record_from_dataset

CT = "1.2.840.10008.5.1.4.1.1.2"


def _instance(n: int, **values: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = f"1.2.3.4.{n}"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.PatientID = "P-1"
    ds.PatientName = "DOE^JANE"
    ds.PatientSex = "F"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate, ds.StudyTime = "20260101", "101500"
    ds.Modality = "CT"
    ds.SeriesNumber = "3"
    ds.OperatorsName = ["A^B", "C^D"]
    ds.InstanceNumber = str(n)
    ds.ImagePositionPatient = [0, 0, n]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 2, 2, 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.PixelData = b"\0" * 8
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _wire(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> Dataset:
    """The data set as the SCP has it: decoded from its bytes, every element raw."""
    return codec.decode(codec.encode(ds, ts), ts)


def _check(ds: Dataset, memo: ValidationMemo | None, ts: str = ExplicitVRLittleEndian,
           ) -> tuple[str, str, str, str] | tuple[int, str]:
    try:
        return validate_instance(ds, context_sop_class=CT, affected_sop_instance="",
                                 transfer_syntax=UID(ts), memo=memo)
    except InvalidInstance as exc:
        return exc.status, exc.reason


def test_memo_computes_once_per_distinct_raw_input() -> None:
    calls: list[str] = []

    def name(ds: Dataset) -> str:
        calls.append(str(ds.PatientName))
        return str(ds.PatientName)

    memo = DatasetMemo([0x00100010], name)
    assert [memo(_wire(_instance(n))) for n in range(5)] == ["DOE^JANE"] * 5
    assert calls == ["DOE^JANE"]
    assert memo(_wire(_instance(9, PatientName="ROE^RICHARD"))) == "ROE^RICHARD"
    # the same bytes under another character set are another input
    latin = _wire(_instance(10, SpecificCharacterSet="ISO_IR 100"))
    assert memo(latin) == "DOE^JANE"
    assert len(calls) == 3
    # implicit VR encodes the same value differently: computed again, same result
    assert memo(_wire(_instance(11), ImplicitVRLittleEndian)) == "DOE^JANE"
    assert len(calls) == 4


def test_converted_elements_are_never_taken_from_the_memo() -> None:
    calls: list[int] = []
    memo = DatasetMemo([0x00100010], lambda ds: calls.append(1) or str(ds.PatientName))
    built = _instance(1)             # built in memory: not raw, so not keyed
    assert memo(built) == memo(built) == "DOE^JANE"
    assert len(calls) == 2
    wire = _wire(_instance(2))
    memo(wire)
    wire.PatientName = "CHANGED^NAME"  # set after decoding: computed from the new value
    assert memo(wire) == "CHANGED^NAME"


def test_what_compute_raises_is_raised_every_time() -> None:
    calls: list[int] = []

    def refuse(ds: Dataset) -> str:
        calls.append(1)
        raise InvalidInstance(status.ELEMENT_MISSING, "no")

    memo = DatasetMemo([0x00100010], refuse)
    for _ in range(3):
        with pytest.raises(InvalidInstance):
            memo(_wire(_instance(1)))
    assert len(calls) == 3


def test_memo_stays_bounded() -> None:
    memo = DatasetMemo([0x00100020], lambda ds: str(ds.PatientID), limit=4)
    for n in range(20):
        assert memo(_wire(_instance(n, PatientID=f"P{n}"))) == f"P{n}"
        assert len(memo._results) <= 4


SERIES = [_instance(n) for n in range(4)] + [
    _instance(5, PatientName="Buc^J\xe9r\xf4me", SpecificCharacterSet="ISO_IR 100"),
    _instance(6, PatientName="Wang^XiaoDong=\u738b^\u5c0f\u6771",
              SpecificCharacterSet="ISO_IR 192"),
    _instance(7, OperatorsName=["  X^Y ", "Z"], Modality="MR", SeriesNumber=""),
    _instance(8, StudyInstanceUID="1.2.3.5", SeriesInstanceUID="1.2.3.5.1"),
]


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_records_with_the_memo_equal_records_without(ts: str) -> None:
    memo = RecordMemo()
    for ds in SERIES * 2:
        assert record_from_dataset(_wire(ds, ts), ts, memo) == \
            record_from_dataset(_wire(ds, ts), ts)


REFUSED = [
    _instance(20, StudyInstanceUID="not.a..uid"),
    _instance(21, SeriesInstanceUID=""),
    _instance(22, SOPClassUID="1.2.840.10008.5.1.4.1.1.4"),
    _instance(23, Rows=3),
    _instance(24, PhotometricInterpretation="RGB"),
    _instance(25, BitsAllocated=12),
    _instance(26, NumberOfFrames="2"),
]


def test_validation_with_the_memo_gives_the_same_outcome() -> None:
    memo = ValidationMemo()
    for ds in (SERIES + REFUSED) * 2:
        assert _check(_wire(ds), memo) == _check(_wire(ds), None)
    assert _check(_wire(REFUSED[3]), memo) == (status.PIXEL_DATA_INVALID,
                                               "Pixel Data 8 bytes, expected 12")
