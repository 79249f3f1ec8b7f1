"""Which DICOM query attribute lives in which SQL column, at which level (PS3.4 C.6).

This is the one table to edit when the store learns a new attribute: the matcher and
the response builder read everything from here. Counts and InstanceAvailability read
count columns the store maintains; ModalitiesInStudy reads the study->modality table;
so no computed attribute walks the instances of a match.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from pydicom.datadict import tag_for_keyword


class QueryLevel(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return _DEPTH[self]


_DEPTH = {QueryLevel.PATIENT: 0, QueryLevel.STUDY: 1, QueryLevel.SERIES: 2,
          QueryLevel.IMAGE: 3}


class InfoModel(StrEnum):
    """Values equal the model names node.pacs.scp passes along."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"

    def levels(self) -> tuple[QueryLevel, ...]:
        top = 0 if self is InfoModel.PATIENT_ROOT else 1
        return tuple(lv for lv in QueryLevel if lv.depth >= top)

    def level_of(self, attr: "Attr") -> QueryLevel:
        """Study Root has no patient level: patient attributes belong to the study."""
        if self is InfoModel.STUDY_ROOT and attr.level is QueryLevel.PATIENT:
            return QueryLevel.STUDY
        return attr.level


class Kind(IntEnum):
    """How a key's value is matched (PS3.4 C.2.2.2), derived from its VR."""

    TEXT = 1      # LO, SH, CS, AE, ...: exact or wildcard, case-sensitive
    PN = 2        # person name: exact or wildcard, ASCII case-insensitive
    UID = 3       # single UID or list of UIDs, never wildcards
    DATE = 4      # DA: single value or range
    TIME = 5      # TM: single value (names a period) or range
    DATETIME = 6  # DT: as TM, with the date in front
    INT = 7       # IS, US and computed counts: single integer


@dataclass(frozen=True)
class SetMatch:
    """A set-valued attribute (e.g. ModalitiesInStudy) matches when any member
    matches: ``condition`` is SQL with one ``{}`` for the member's match condition.
    ``copies``: attributes of the parent that the member table holds a copy of
    (keyword, column); a condition on one of them is repeated inside the probe, so the
    probe reads an index range rather than every member with that value (whatever
    join order the planner picks, e.g. on PostgreSQL tables not yet analyzed)."""

    condition: str
    member: str
    kind: Kind
    copies: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: QueryLevel
    kind: Kind
    expr: str                                  # SQL scalar expression for the value
    by_level: tuple[tuple[QueryLevel, str], ...] = ()   # expr depending on query level
    set_match: SetMatch | None = None

    @property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag

    def expr_at(self, level: QueryLevel) -> str:
        return dict(self.by_level).get(level, self.expr)


_P, _ST, _SE, _IM = QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE

# Instances of a study, as a FROM ... WHERE fragment for subqueries.
_STUDY_INSTANCES = "instances x JOIN series y ON y.id = x.series_id WHERE y.study_id = st.id"


def _availability(alias: str) -> str:
    """NEARLINE when any instance has no local file, or none is known yet (from the
    count columns the store keeps: ``num_local`` = instances with a local file)."""
    return (f"CASE WHEN {alias}.num_instances > 0 AND {alias}.num_local = {alias}.num_instances "
            "THEN 'ONLINE' ELSE 'NEARLINE' END")


def _distinct_list(column: str, source: str) -> str:
    return (f"(SELECT group_concat(v, '\\') FROM (SELECT DISTINCT {column} AS v "
            f"FROM {source} AND {column} <> '' ORDER BY v) AS d)")


ATTRS: tuple[Attr, ...] = (
    # patient level
    Attr("PatientID", _P, Kind.TEXT, "pp.pid"),
    Attr("IssuerOfPatientID", _P, Kind.TEXT, "pp.issuer"),
    Attr("PatientName", _P, Kind.PN, "pp.name"),
    Attr("PatientBirthDate", _P, Kind.DATE, "pp.birth_date"),
    Attr("PatientSex", _P, Kind.TEXT, "p.sex"),
    # counts are columns the store keeps up to date (triggers), never counted per query
    Attr("NumberOfPatientRelatedStudies", _P, Kind.INT, "p.num_studies"),
    Attr("NumberOfPatientRelatedSeries", _P, Kind.INT, "p.num_series"),
    Attr("NumberOfPatientRelatedInstances", _P, Kind.INT, "p.num_instances"),
    # study level
    Attr("StudyInstanceUID", _ST, Kind.UID, "st.study_uid"),
    Attr("StudyDate", _ST, Kind.DATE, "st.study_date"),
    Attr("StudyTime", _ST, Kind.TIME, "st.study_time"),
    Attr("AccessionNumber", _ST, Kind.TEXT, "sp.accession"),
    Attr("StudyID", _ST, Kind.TEXT, "sp.study_id_text"),
    Attr("StudyDescription", _ST, Kind.TEXT, "sp.description"),
    Attr("ReferringPhysicianName", _ST, Kind.PN, "sp.referring_physician"),
    Attr("InstitutionName", _ST, Kind.TEXT, "sp.institution"),
    Attr("NumberOfStudyRelatedSeries", _ST, Kind.INT, "st.num_series"),
    Attr("NumberOfStudyRelatedInstances", _ST, Kind.INT, "st.num_instances"),
    Attr("ModalitiesInStudy", _ST, Kind.TEXT,
         _distinct_list("sm.modality", "study_modalities sm WHERE sm.study_id = st.id"),
         # one primary-key probe of study_modalities (study_id, modality) per candidate
         # study; with a date range only the dated studies are probed, and the probe
         # itself is bounded by (modality, study_date) (the triggers keep the copy)
         set_match=SetMatch("EXISTS (SELECT 1 FROM study_modalities sm "
                            "WHERE sm.study_id = st.id AND ({}))", "sm.modality", Kind.TEXT,
                            copies=(("StudyDate", "sm.study_date"),))),
    Attr("SOPClassesInStudy", _ST, Kind.UID, _distinct_list("x.sop_class_uid", _STUDY_INSTANCES),
         set_match=SetMatch(f"EXISTS (SELECT 1 FROM {_STUDY_INSTANCES} AND ({{}}))",
                            "x.sop_class_uid", Kind.UID)),
    # series level
    Attr("SeriesInstanceUID", _SE, Kind.UID, "se.series_uid"),
    Attr("Modality", _SE, Kind.TEXT, "se.modality"),
    Attr("BodyPartExamined", _SE, Kind.TEXT, "se.body_part"),
    Attr("SeriesNumber", _SE, Kind.INT, "se.series_number"),
    Attr("SeriesDate", _SE, Kind.DATE, "se.series_date"),
    Attr("SeriesTime", _SE, Kind.TIME, "se.series_time"),
    Attr("SeriesDescription", _SE, Kind.TEXT, "sep.description"),
    Attr("OperatorsName", _SE, Kind.PN, "sep.operators"),
    Attr("StationName", _SE, Kind.TEXT, "sep.station"),
    Attr("NumberOfSeriesRelatedInstances", _SE, Kind.INT, "se.num_instances"),
    # image level
    Attr("SOPInstanceUID", _IM, Kind.UID, "i.sop_uid"),
    Attr("SOPClassUID", _IM, Kind.UID, "i.sop_class_uid"),
    Attr("InstanceNumber", _IM, Kind.INT, "i.instance_number"),
    Attr("Rows", _IM, Kind.INT, "i.rows"),
    Attr("Columns", _IM, Kind.INT, "i.columns"),
    Attr("NumberOfFrames", _IM, Kind.INT, "i.number_of_frames"),
    Attr("AvailableTransferSyntaxUID", _IM, Kind.UID, "i.transfer_syntax"),
    # any level: the value depends on the level asked
    Attr("InstanceAvailability", _P, Kind.TEXT, _availability("p"),
         by_level=((_ST, _availability("st")), (_SE, _availability("se")),
                   (_IM, "CASE WHEN i.path IS NULL THEN 'NEARLINE' ELSE 'ONLINE' END"))),
)

ATTR_BY_TAG: dict[int, Attr] = {a.tag: a for a in ATTRS}
ATTR_BY_KEYWORD: dict[str, Attr] = {a.keyword: a for a in ATTRS}
ANY_LEVEL = frozenset({ATTR_BY_KEYWORD["InstanceAvailability"].tag})

UNIQUE_KEY: dict[QueryLevel, Attr] = {
    _P: ATTR_BY_KEYWORD["PatientID"], _ST: ATTR_BY_KEYWORD["StudyInstanceUID"],
    _SE: ATTR_BY_KEYWORD["SeriesInstanceUID"], _IM: ATTR_BY_KEYWORD["SOPInstanceUID"],
}

_PATIENT_JOIN = "JOIN patients p ON p.id = st.patient_id JOIN patient_phi pp ON pp.patient_id = p.id"
_STUDY_JOIN = f"JOIN study_phi sp ON sp.study_id = st.id {_PATIENT_JOIN}"
_SERIES_JOIN = ("JOIN series_phi sep ON sep.series_id = se.id "
                f"JOIN studies st ON st.id = se.study_id {_STUDY_JOIN}")

# One row per entity of the level, joined to all of its ancestors (every row has
# exactly one, so a key of a higher level can always be matched and returned).
FROM: dict[QueryLevel, str] = {
    _P: "patients p JOIN patient_phi pp ON pp.patient_id = p.id",
    _ST: f"studies st {_STUDY_JOIN}",
    _SE: f"series se {_SERIES_JOIN}",
    _IM: f"instances i JOIN series se ON se.id = i.series_id {_SERIES_JOIN}",
}

ORDER_BY: dict[QueryLevel, str] = {
    _P: "p.id",
    _ST: "st.study_date, st.study_time, st.id",
    _SE: "se.study_id, se.series_number, se.id",
    _IM: "i.series_id, i.instance_number, i.id",
}
