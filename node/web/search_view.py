"""What the search page shows while sites answer (pure: no I/O, no aiohttp).

The form's fields become one ``FederatedQuery`` (series level, so every result can be
opened and fetched). Answers arrive one site at a time; ``SearchView`` keeps them, the
status of every site (waiting until it answers; "not asked" when the index planner
skipped it) and the results merged by patient pseudonym and grouped by study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.query.fanout import SiteAnswer
from node.query.merge import MergedCount, merge_counts, merge_patients
from node.query.model import FederatedQuery, QueryError

TEXT_FIELDS = ("patient_id", "issuer", "patient_name", "modality", "body_part", "description",
               "sex")
NUMBER_FIELDS = ("age_min", "age_max")
FORM_FIELDS = (*TEXT_FIELDS, "study_date_from", "study_date_to", *NUMBER_FIELDS, "purpose")
RESULT_LIMIT = 500
UPPER = ("modality", "body_part", "sex")


def parse_search(form: Mapping[str, str], purposes: Sequence[str]) -> tuple[FederatedQuery, str]:
    """The query and purpose of use a search form asks for; QueryError names a bad field."""
    doc: dict[str, Any] = {"level": "series", "limit": RESULT_LIMIT}
    for name in TEXT_FIELDS + ("study_date_from", "study_date_to"):
        value = str(form.get(name, "")).strip()
        if value:
            doc[name] = value.upper() if name in UPPER else value
    for name in NUMBER_FIELDS:
        value = str(form.get(name, "")).strip()
        if value:
            if not value.isdigit():
                raise QueryError(f"{name.replace('_', ' ')} must be a whole number of years")
            doc[name] = int(value)
    purpose = str(form.get("purpose", "")).strip() or (purposes[0] if purposes else "")
    if purpose not in purposes:
        raise QueryError(f"purpose of use must be one of: {', '.join(purposes) or 'none'} "
                         "(your role allows no other)")
    return FederatedQuery.from_json(doc), purpose


def used_fields(q: FederatedQuery) -> str:
    """Which fields a search used (names only: the values may be PHI), for the audit log."""
    return ",".join(k for k in sorted(q.to_json()) if k not in ("level", "limit"))


@dataclass
class Chip:
    site: str
    status: str              # waiting | ok | timeout | denied | error | unreachable | skipped
    latency_ms: float = 0.0
    level: str = ""
    detail: str = ""         # counts as the site released them, or why it failed


@dataclass
class Series:
    ref: str                 # owner node id : keyed series uid (what fetch takes)
    series_uid: str
    number: Any
    modality: str
    body_part: str
    instances: Any
    description: str
    site: str
    sites: list[str]


@dataclass
class Study:
    study_uid: str           # keyed: the same at every site
    viewer_uid: str          # what DICOMweb here knows it by (real when this node may say)
    when: str
    description: str
    modalities: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    age: Any = None


@dataclass
class PatientGroup:
    pseudonym: str
    sites: list[str]
    sex: str
    name: str                # identified answers only, else ""
    patient_id: str
    studies: list[Study]


def _counts_text(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in ("patients", "studies", "series") if k in counts)


class SearchView:
    def __init__(self, sites: Sequence[tuple[str, str]]) -> None:
        """``sites``: (name, node id) of every member that may be asked."""
        self._order = [name for name, _ in sites]
        self.node_ids = {name: node_id for name, node_id in sites}
        self.answers: list[SiteAnswer] = []
        self.finished = False
        self.real_uids: dict[str, str] = {}   # keyed -> real, for this node's own studies

    def add(self, answer: SiteAnswer) -> None:
        self.answers.append(answer)
        self.node_ids.setdefault(answer.site.name, answer.site.node_id)
        if answer.site.name not in self._order:
            self._order.append(answer.site.name)

    def finish(self) -> None:
        self.finished = True

    def chips(self) -> list[Chip]:
        by_site = {a.site.name: a for a in self.answers}
        chips = []
        for name in self._order:
            answer = by_site.get(name)
            if answer is None:
                chips.append(Chip(name, "skipped" if self.finished else "waiting",
                                  detail="not asked: the index shows no match there"
                                  if self.finished else "waiting for an answer"))
            elif answer.status == "ok":
                detail = (_counts_text(answer.counts) if answer.level == "count"
                          else f"{len(answer.rows)} series")
                chips.append(Chip(name, "ok", answer.latency_ms, answer.level, detail))
            else:
                chips.append(Chip(name, answer.status, answer.latency_ms, detail=answer.reason))
        return chips

    def counts(self) -> dict[str, MergedCount]:
        return merge_counts(self.answers)

    def patients(self) -> list[PatientGroup]:
        groups = []
        for merged in merge_patients(self.answers):
            studies: dict[str, Study] = {}
            name = patient_id = sex = ""
            for row in merged.records:
                sex = sex or str(row.get("sex") or "")
                name = name or str(row.get("patient_name") or "")
                patient_id = patient_id or str(row.get("patient_id") or "")
                uid = str(row.get("study_uid", ""))
                study = studies.get(uid)
                if study is None:
                    viewer = str(row.get("study_uid_real") or self.real_uids.get(uid) or uid)
                    study = studies[uid] = Study(
                        uid, viewer, str(row.get("study_date") or row.get("study_month") or ""),
                        str(row.get("description") or ""), age=row.get("age"))
                for site in row.get("sites", []):
                    if site not in study.sites:
                        study.sites.append(site)
                if "series_uid" in row:
                    self._add_series(study, row)
            for study in studies.values():
                study.modalities = sorted({s.modality for s in study.series if s.modality})
                study.body_parts = sorted({s.body_part for s in study.series if s.body_part})
                study.series.sort(key=lambda s: (str(s.number or ""), s.series_uid))
            groups.append(PatientGroup(merged.pseudonym, merged.sites, sex, name, patient_id,
                                       sorted(studies.values(), key=lambda s: s.when,
                                              reverse=True)))
        return groups

    def _add_series(self, study: Study, row: Mapping[str, Any]) -> None:
        site = str(row.get("site", ""))
        owner = self.node_ids.get(site, "")
        study.series.append(Series(
            f"{owner}:{row['series_uid']}", str(row["series_uid"]), row.get("series_number"),
            str(row.get("modality") or ""), str(row.get("body_part") or ""),
            row.get("instances"), str(row.get("series_description") or ""), site,
            list(row.get("sites", [site]))))
