"""The one federated query: what a clinician asks, in JSON (peer wire, CLI) or C-FIND form.

Pure, no I/O. A query that names a patient by ID + issuer is only ever built at the home
site; ``for_federation`` turns it into the federation pseudonym before it leaves, so a
plain patient ID never crosses the network. Validation is strict: a malformed query gets
a ``QueryError`` that says which field to fix, never a half-understood search.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import date
from typing import Any, Literal

from pydicom.dataset import Dataset

from node.deid.actions import pseudonym

Level = Literal["patient", "study", "series"]
LEVELS: tuple[str, ...] = ("patient", "study", "series")
MAX_LIMIT = 10000
SEXES = ("M", "F", "O")
_CODE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_PSEUDONYM = re.compile(r"^PSN-[A-Z2-7]{16}$")
_TEXT = re.compile(r"^[^\x00-\x1f\x7f\\]{1,64}$")


FREE_TEXT_FIELDS = ("patient_name", "description")
FILTER_FIELDS = ("patient_pseudonym", "patient_id", "issuer", "patient_name", "modality",
                 "body_part", "study_date_from", "study_date_to", "description", "sex",
                 "age_min", "age_max")


class QueryError(ValueError):
    """The query cannot be run as written; the message names the field and the fix."""


@dataclass(frozen=True)
class FederatedQuery:
    patient_pseudonym: str | None = None
    patient_id: str | None = None          # home site only: converted before fan-out
    issuer: str | None = None              # IssuerOfPatientID, with patient_id
    patient_name: str | None = None        # identified answers only; wildcards * ?
    modality: str | None = None
    body_part: str | None = None
    study_date_from: date | None = None
    study_date_to: date | None = None
    description: str | None = None         # study description contains (case-insensitive)
    sex: str | None = None
    age_min: int | None = None
    age_max: int | None = None
    level: Level = "study"
    limit: int = 1000

    def __post_init__(self) -> None:
        _check(self)

    # -- forms -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; unset fields are left out, dates are ISO strings."""
        doc: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            doc[key] = value.isoformat() if isinstance(value, date) else value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | str | bytes) -> "FederatedQuery":
        """Parse the JSON form (an object, or its text); unknown keys are refused."""
        if isinstance(doc, (str, bytes)):
            try:
                doc = json.loads(doc)
            except ValueError as exc:
                raise QueryError(f"query is not valid JSON: {exc}") from None
        if not isinstance(doc, Mapping):
            raise QueryError("query must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in doc if k not in known)
        if unknown:
            raise QueryError(f"unknown query field(s): {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key, value in doc.items():
            if value is None:
                continue
            if key in ("study_date_from", "study_date_to"):
                value = _iso_date(key, value)
            elif key in ("age_min", "age_max", "limit"):
                value = _whole(key, value)
            elif not isinstance(value, str):
                raise QueryError(f"{key} must be text")
            values[key] = value
        return cls(**values)

    @classmethod
    def from_cfind(cls, identifier: Dataset) -> "FederatedQuery":
        """The subset of a C-FIND identifier the federation understands (PS3.4 C.6)."""
        level = _text(identifier, "QueryRetrieveLevel").lower() or "study"
        if level not in LEVELS:
            raise QueryError(f"QueryRetrieveLevel {level.upper()} is not supported by the "
                             "federation; use PATIENT, STUDY or SERIES")
        modality = (_text(identifier, "ModalitiesInStudy") or _text(identifier, "Modality"))
        modality = modality.split("\\")[0] if modality else ""
        date_from, date_to = _dicom_range(_text(identifier, "StudyDate"))
        description = _text(identifier, "StudyDescription").strip("*") or None
        return cls(patient_id=_wild_none(_text(identifier, "PatientID")),
                   issuer=_wild_none(_text(identifier, "IssuerOfPatientID")),
                   patient_name=_wild_none(_text(identifier, "PatientName")),
                   modality=_wild_none(modality.upper()),
                   body_part=_wild_none(_text(identifier, "BodyPartExamined").upper()),
                   study_date_from=date_from, study_date_to=date_to,
                   description=description,
                   sex=_wild_none(_text(identifier, "PatientSex").upper()),
                   level=level)  # type: ignore[arg-type]

    # -- home-site conversion ----------------------------------------------------
    def for_federation(self, linkage_key: bytes) -> "FederatedQuery":
        """The query as it may leave the home site: patient ID + issuer -> pseudonym."""
        if self.patient_id is None:
            return self
        return replace(self, patient_pseudonym=pseudonym(self.patient_id, self.issuer or "",
                                                         linkage_key),
                       patient_id=None, issuer=None)

    @property
    def free_text_fields(self) -> tuple[str, ...]:
        """The free-text (PHI) filters this query uses. Only a site that answers at the
        identified level may apply them: at any other level, which queries match would
        spell the text out character by character."""
        return tuple(name for name in FREE_TEXT_FIELDS if getattr(self, name) is not None)

    @property
    def filter_fields(self) -> tuple[str, ...]:
        """The names (never the values) of the filters this query sets, for the audit log."""
        return tuple(name for name in FILTER_FIELDS if getattr(self, name) is not None)


def _check(q: FederatedQuery) -> None:
    if q.level not in LEVELS:
        raise QueryError(f"level must be one of {', '.join(LEVELS)}, not {q.level!r}")
    if not isinstance(q.limit, int) or isinstance(q.limit, bool) or not 1 <= q.limit <= MAX_LIMIT:
        raise QueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    if q.patient_pseudonym is not None and not _PSEUDONYM.match(q.patient_pseudonym):
        raise QueryError("patient_pseudonym must look like PSN- followed by 16 base32 "
                         "characters (as the federation issues them)")
    if q.patient_pseudonym is not None and q.patient_id is not None:
        raise QueryError("give either patient_pseudonym or patient_id, not both")
    if q.issuer is not None and q.patient_id is None:
        raise QueryError("issuer needs patient_id")
    for name in ("patient_id", "issuer", "patient_name", "description"):
        value = getattr(q, name)
        if value is not None and (not isinstance(value, str) or not _TEXT.match(value)):
            raise QueryError(f"{name} must be 1-64 printable characters without backslash")
    for name in ("modality", "body_part"):
        value = getattr(q, name)
        if value is not None and (not isinstance(value, str) or not _CODE.match(value)):
            raise QueryError(f"{name} must be a DICOM code string in capitals, e.g. CT or "
                             "CHEST (1-16 of A-Z, 0-9, _ and space)")
    if q.sex is not None and q.sex not in SEXES:
        raise QueryError(f"sex must be one of {', '.join(SEXES)}")
    for name in ("study_date_from", "study_date_to"):
        if getattr(q, name) is not None and not isinstance(getattr(q, name), date):
            raise QueryError(f"{name} must be a date")
    if q.study_date_from and q.study_date_to and q.study_date_from > q.study_date_to:
        raise QueryError("study_date_from is after study_date_to")
    for name in ("age_min", "age_max"):
        value = getattr(q, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 0 <= value <= 150):
            raise QueryError(f"{name} must be a whole number of years from 0 to 150")
    if q.age_min is not None and q.age_max is not None and q.age_min > q.age_max:
        raise QueryError("age_min is larger than age_max")


def _iso_date(key: str, value: object) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise QueryError(f"{key} must be a date as YYYY-MM-DD, not {str(value)[:20]!r}") from None


def _whole(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise QueryError(f"{key} must be a whole number")
    return value


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _wild_none(value: str) -> str | None:
    """Empty or all-wildcard C-FIND keys mean 'return this attribute', not a filter."""
    return None if value.strip("*") == "" else value


def _dicom_date(text: str) -> date | None:
    if not text:
        return None
    if not re.fullmatch(r"\d{8}", text):
        raise QueryError(f"StudyDate {text[:20]!r} must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise QueryError(f"StudyDate {text!r} is not a calendar date") from None


def _dicom_range(text: str) -> tuple[date | None, date | None]:
    if "-" not in text:
        day = _dicom_date(text)
        return day, day
    low, _, high = text.partition("-")
    return _dicom_date(low), _dicom_date(high)
