"""A QIDO-RS query string as a C-FIND identifier (pure, PS3.18 8.3.4 / 10.6).

QIDO matching is C-FIND matching, so the query becomes an identifier for the one C-FIND
matcher the node has (``node.pacs.matching``): ``Keyword=value`` or ``ggggeeee=value``
match, ``includefield`` adds return keys (``all`` = every attribute the store knows at
that level and above), ``limit``/``offset`` page. Unknown attributes are refused with a
reason rather than ignored (a silently dropped filter returns too much).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from node.pacs.qr_attributes import ATTRS, InfoModel, QueryLevel

MAX_LIMIT = 10000
DEFAULT_LIMIT = 1000
RESERVED = {"includefield", "limit", "offset", "fuzzymatching"}

# PS3.18 Table 10.6.3-3/-4/-5: what each level returns without includefield.
DEFAULT_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
                       "ModalitiesInStudy", "ReferringPhysicianName", "PatientName",
                       "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                       "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
                       "NumberOfStudyRelatedInstances"),
    QueryLevel.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                        "NumberOfSeriesRelatedInstances", "BodyPartExamined", "SeriesDate",
                        "SeriesTime", "InstanceAvailability"),
    QueryLevel.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
                       "InstanceNumber", "Rows", "Columns", "NumberOfFrames"),
}
_UID_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}


class QidoError(ValueError):
    """The query string cannot be run as written (400; the message says what to fix)."""


@dataclass(frozen=True)
class QidoRequest:
    level: QueryLevel
    identifier: Dataset
    filters: dict[str, str] = field(default_factory=dict)   # keyword -> value as matched
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def _keyword(name: str) -> str:
    """A query key as a keyword: ``PatientID`` or ``00100020``."""
    text = name.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        keyword = keyword_for_tag(int(text, 16))
        if keyword:
            return keyword
        raise QidoError(f"attribute {text} is not in the DICOM dictionary")
    if tag_for_keyword(text) is None:
        raise QidoError(f"{text[:40]!r} is not a DICOM attribute keyword or tag "
                        "(e.g. PatientID or 00100020)")
    return text


def _whole(name: str, text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise QidoError(f"{name} must be a whole number from {low} to {high}")
    return int(text)


def _known_at(level: QueryLevel) -> list[str]:
    return [a.keyword for a in ATTRS
            if InfoModel.STUDY_ROOT.level_of(a).depth <= level.depth]


def _element(keyword: str, value: str) -> DataElement:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    vr = dictionary_VR(tag).split(" or ")[0]
    return DataElement(tag, vr, value or None, validation_mode=config.IGNORE)


def parse_qido(level: QueryLevel, params: Sequence[tuple[str, str]], *,
               path_uids: Mapping[str, str] = {}) -> QidoRequest:
    """Build the request from the query string pairs and the UIDs named by the path."""
    filters: dict[str, str] = {}
    includes: list[str] = []
    limit, offset = DEFAULT_LIMIT, 0
    for raw_key, value in params:
        key = raw_key.strip()
        if key == "includefield":
            includes += [v.strip() for v in value.split(",") if v.strip()]
        elif key == "limit":
            limit = _whole("limit", value, 1, MAX_LIMIT)
        elif key == "offset":
            offset = _whole("offset", value, 0, 10**9)
        elif key == "fuzzymatching":
            if value not in ("true", "false"):
                raise QidoError("fuzzymatching must be true or false")
        else:
            keyword = _keyword(key)
            if keyword in filters:
                raise QidoError(f"{keyword} is given twice")
            if "\x00" in value or len(value) > 1024:
                raise QidoError(f"the value of {keyword} is not valid text")
            filters[keyword] = value.replace(",", "\\") if keyword in _UID_KEYS else value
    for keyword, uid in path_uids.items():
        filters[keyword] = uid
    keys: list[str] = list(DEFAULT_KEYS[level])
    for name in includes:
        keys += _known_at(level) if name == "all" else [_keyword(name)]
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for keyword in dict.fromkeys([*keys, *filters]):
        ds[tag_for_keyword(keyword)] = _element(keyword, filters.get(keyword, ""))
    return QidoRequest(level, ds, filters, limit, offset)
