"""What to ask an upstream PACS, decided without touching the network (pure).

Why: sync and retrieval are mostly bookkeeping — which date window to query, which
studies changed, which identifiers and presentation contexts to send. Keeping that
here lets it be tested directly; the SCU and the store stay thin edges.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from ..store.records import _int

# A count attribute (e.g. NumberOfStudyRelatedInstances) as int, None if absent/bad.
count_of = _int

MAX_CONTEXTS = 128

# One presentation context per transfer syntax (not one context listing them all): the
# PACS then sends each instance as stored instead of picking one syntax for everything.
STORE_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLosslessSV1,
    JPEGBaseline8Bit, JPEG2000Lossless, JPEG2000, JPEGLSLossless, JPEGLSNearLossless,
    JPEGExtended12Bit, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
)

STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
              "ReferringPhysicianName", "InstitutionName", "PatientID", "IssuerOfPatientID",
              "PatientName", "PatientBirthDate", "PatientSex",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_KEYS = ("Modality", "BodyPartExamined", "SeriesNumber", "SeriesDate", "SeriesTime",
               "SeriesDescription", "OperatorsName", "StationName",
               "NumberOfSeriesRelatedInstances")
IMAGE_KEYS = ("SOPClassUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
              "ImagePositionPatient")


def upstream_key(ae_title: str, host: str, port: int) -> str:
    """The sync_state key: one row per upstream PACS."""
    return f"{ae_title.strip()}@{host}:{port}"


def date_floor(last_sync_at: float | None, lookback_days: int) -> str:
    """The StudyDate lower bound for an incremental sync ('' = all studies).

    Studies whose date lies before the last sync minus the look-back are assumed
    complete; the look-back covers late arrivals and clock skew.
    """
    if last_sync_at is None:
        return ""
    day = dt.datetime.fromtimestamp(last_sync_at).date()  # StudyDate is local time
    return (day - dt.timedelta(days=max(0, lookback_days))).strftime("%Y%m%d")


def _blank(ds: Dataset, keywords: Iterable[str]) -> None:
    for keyword in keywords:
        setattr(ds, keyword, None)  # universal matching / return key


def study_query(since: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    _blank(ds, STUDY_KEYS)
    ds.StudyDate = f"{since}-" if since else ""
    return ds


def series_query(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    _blank(ds, SERIES_KEYS)
    return ds


def image_query(study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ""
    _blank(ds, IMAGE_KEYS)
    return ds


def get_identifier(study_uid: str, series_uid: str, sop_uids: Sequence[str]) -> Dataset:
    """An IMAGE-level C-GET for a list of instances of one series (PS3.4 C.4.2.2.1:
    the unique key may hold a list of UIDs)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = list(sop_uids) if len(sop_uids) > 1 else sop_uids[0]
    return ds


def needs_walk(remote_count: int | None, local_count: int | None) -> bool:
    """Walk a study/series again unless both sides report the same instance count.
    A PACS that does not report counts is always walked (correct, just slower)."""
    if local_count is None or remote_count is None:
        return True
    return remote_count != local_count


class Wanted(Protocol):
    """One instance to retrieve, with what is needed to ask for it (the index's
    ``cache_rows.InstanceRef`` is one)."""

    @property
    def instance_id(self) -> int: ...
    @property
    def sop_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...


@dataclass(frozen=True)
class SeriesBatch:
    study_uid: str
    series_uid: str
    items: tuple[Wanted, ...]


def batches(wanted: Iterable[Wanted], max_uids: int = 1000) -> list[SeriesBatch]:
    """Group instances by series (one C-GET each), splitting only very long lists."""
    groups: dict[tuple[str, str], list[Wanted]] = {}
    for w in wanted:
        groups.setdefault((w.study_uid, w.series_uid), []).append(w)
    out = []
    for (study, series), items in groups.items():
        for start in range(0, len(items), max_uids):
            out.append(SeriesBatch(study, series, tuple(items[start:start + max_uids])))
    return out


def storage_contexts(items: Iterable[Wanted], reserved: int = 1) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs to propose with the SCP role for a C-GET.

    In rounds across all classes: the syntax each was last retrieved in (if known),
    then explicit and implicit little endian, then the compressed syntaxes — so within
    the 128-context limit every class can arrive somehow before any gets extras.
    """
    classes: dict[str, list[str]] = {}
    for w in items:
        if not w.sop_class_uid:
            continue
        known = classes.setdefault(w.sop_class_uid, [])
        if w.transfer_syntax and w.transfer_syntax not in known:
            known.append(w.transfer_syntax)
    room = MAX_CONTEXTS - reserved
    pairs: dict[tuple[str, str], None] = {}
    rounds = [lambda known: known, lambda known: [ExplicitVRLittleEndian],
              lambda known: [ImplicitVRLittleEndian], lambda known: list(STORE_SYNTAXES)]
    for syntaxes_of in rounds:
        for sop_class, known in classes.items():
            for ts in syntaxes_of(known):
                if len(pairs) < room:
                    pairs.setdefault((sop_class, ts), None)
    return list(pairs)
