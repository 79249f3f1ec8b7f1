"""The metadata record of one instance, taken from its dataset (pure, no I/O).

The same record serves C-STORE ingest and upstream sync (where a C-FIND answer gives
only part of it). PHI fields are kept apart in the record as in the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from .dataset_memo import DatasetMemo

T = TypeVar("T")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class PatientRec:
    pid: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""

    @property
    def birth_year(self) -> int | None:
        return int(self.birth_date[:4]) if self.birth_date[:4].isdigit() else None


@dataclass(frozen=True)
class StudyRec:
    uid: str
    date: str = ""
    time: str = ""
    accession: str = ""
    study_id: str = ""
    description: str = ""
    referring_physician: str = ""
    institution: str = ""


@dataclass(frozen=True)
class SeriesRec:
    uid: str
    modality: str = ""
    body_part: str = ""
    number: int | None = None
    date: str = ""
    time: str = ""
    description: str = ""
    operators: str = ""
    station: str = ""


@dataclass(frozen=True)
class InstanceRec:
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    number: int | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    position_z: float | None = None


@dataclass(frozen=True)
class InstanceRecord:
    patient: PatientRec
    study: StudyRec
    series: SeriesRec
    instance: InstanceRec


def patient_from(ds: Dataset) -> PatientRec:
    return PatientRec(
        pid=_text(ds, "PatientID"), issuer=_text(ds, "IssuerOfPatientID"),
        name=_text(ds, "PatientName"), birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex").upper())


def study_from(ds: Dataset) -> StudyRec:
    return StudyRec(
        uid=_text(ds, "StudyInstanceUID"), date=_text(ds, "StudyDate"),
        time=_text(ds, "StudyTime"), accession=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID"), description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        institution=_text(ds, "InstitutionName"))


def series_from(ds: Dataset) -> SeriesRec:
    return SeriesRec(
        uid=_text(ds, "SeriesInstanceUID"), modality=_text(ds, "Modality").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(), number=_int(ds, "SeriesNumber"),
        date=_text(ds, "SeriesDate"), time=_text(ds, "SeriesTime"),
        description=_text(ds, "SeriesDescription"), operators=_text(ds, "OperatorsName"),
        station=_text(ds, "StationName"))


Shape = tuple[str, int | None, int | None, int | None]


def shape_from(ds: Dataset) -> Shape:
    """SOP class, rows, columns, frames: the same in every instance of a series."""
    return (_text(ds, "SOPClassUID"), _int(ds, "Rows"), _int(ds, "Columns"),
            _int(ds, "NumberOfFrames"))


def instance_from(ds: Dataset, transfer_syntax: str,
                  shape: Callable[[Dataset], Shape] = shape_from) -> InstanceRec:
    z = None
    ipp = ds.get("ImagePositionPatient")
    try:
        if ipp is not None and len(ipp) == 3:
            z = float(ipp[2])
    except (TypeError, ValueError):
        z = None
    sop_class, rows, columns, frames = shape(ds)
    return InstanceRec(
        sop_uid=_text(ds, "SOPInstanceUID"), sop_class_uid=sop_class,
        transfer_syntax=transfer_syntax, number=_int(ds, "InstanceNumber"),
        rows=rows, columns=columns, frames=frames, position_z=z)


def _memo(compute: Callable[[Dataset], T], keywords: str) -> DatasetMemo[T]:
    return DatasetMemo([int(tag_for_keyword(k) or 0) for k in keywords.split()], compute)


@dataclass
class RecordMemo:
    """The patient, study and series records and the instance's shape, remembered by
    the raw bytes of the elements each is made of: every instance of a series repeats them (about 0.4 ms
    of pydicom conversions per instance otherwise, dataset_memo.py). One per ingestor."""

    patient: DatasetMemo[PatientRec] = field(default_factory=lambda: _memo(
        patient_from, "PatientID IssuerOfPatientID PatientName PatientBirthDate PatientSex"))
    study: DatasetMemo[StudyRec] = field(default_factory=lambda: _memo(
        study_from, "StudyInstanceUID StudyDate StudyTime AccessionNumber StudyID "
                    "StudyDescription ReferringPhysicianName InstitutionName"))
    series: DatasetMemo[SeriesRec] = field(default_factory=lambda: _memo(
        series_from, "SeriesInstanceUID Modality BodyPartExamined SeriesNumber SeriesDate "
                     "SeriesTime SeriesDescription OperatorsName StationName"))
    shape: DatasetMemo[Shape] = field(default_factory=lambda: _memo(
        shape_from, "SOPClassUID Rows Columns NumberOfFrames"))


def record_from_dataset(ds: Dataset, transfer_syntax: str,
                        memo: RecordMemo | None = None) -> InstanceRecord:
    if memo is None:
        return InstanceRecord(patient_from(ds), study_from(ds), series_from(ds),
                              instance_from(ds, transfer_syntax))
    return InstanceRecord(memo.patient(ds), memo.study(ds), memo.series(ds),
                          instance_from(ds, transfer_syntax, memo.shape))
