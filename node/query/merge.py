"""Merging the sites' answers into one list for the clinician (pure, no I/O).

Patients: rows are grouped by the federation pseudonym, which every site computes from
PatientID + issuer with the shared linkage key, so the same patient seen at three
hospitals appears once, listing the three sites. Studies are deduplicated by their keyed
StudyInstanceUID (the same study held at two sites appears once, with both sites).

Counts: a site answering at ``count`` level may suppress small numbers as ``"<N"``
(N = its threshold). Such a site holds at least 1 and at most N-1 matches, so the merged
total is exact only when nothing was suppressed; otherwise it is a lower bound: the sum
of the known counts plus 1 per suppressed site, shown as ``">= total"``. Sites answering
with rows contribute their exact counts. Patients seen at several sites are counted once
per site in these totals (counts cannot be deduplicated across sites without rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .fanout import SiteAnswer

COUNT_KINDS = ("patients", "studies", "series")


@dataclass
class MergedCount:
    known: int = 0              # sum of exact counts
    suppressed_sites: int = 0   # sites that answered "<N"

    @property
    def lower_bound(self) -> int:
        return self.known + self.suppressed_sites

    @property
    def exact(self) -> bool:
        return self.suppressed_sites == 0

    def display(self) -> str:
        return str(self.known) if self.exact else f">= {self.lower_bound}"

    def to_json(self) -> dict[str, Any]:
        return {"known": self.known, "suppressed_sites": self.suppressed_sites,
                "exact": self.exact, "display": self.display()}


@dataclass
class MergedPatient:
    pseudonym: str
    sites: list[str] = field(default_factory=list)          # site names, sorted
    records: list[dict[str, Any]] = field(default_factory=list)  # rows, each with "sites"

    def to_json(self) -> dict[str, Any]:
        return {"pseudonym": self.pseudonym, "sites": self.sites, "records": self.records}


def _record_key(row: dict[str, Any]) -> tuple[str, ...]:
    """Rows that describe the same thing: same series, else same study, else same patient."""
    if "series_uid" in row:
        return ("series", str(row["series_uid"]))
    if "study_uid" in row:
        return ("study", str(row["study_uid"]))
    return ("patient", str(row.get("patient")))


def merge_patients(answers: Sequence[SiteAnswer]) -> list[MergedPatient]:
    """One entry per pseudonym, sorted by pseudonym; record rows tagged with their sites."""
    patients: dict[str, MergedPatient] = {}
    records: dict[tuple[str, ...], dict[str, Any]] = {}
    for answer in answers:
        if answer.status != "ok":
            continue
        for row in answer.rows:
            psn = str(row["patient"])
            patient = patients.setdefault(psn, MergedPatient(psn))
            if answer.site.name not in patient.sites:
                patient.sites.append(answer.site.name)
            key = (psn, *_record_key(row))
            if key in records and _record_key(row)[0] != "patient":
                if answer.site.name not in records[key]["sites"]:
                    records[key]["sites"].append(answer.site.name)
                continue
            merged = {**row, "site": answer.site.name, "sites": [answer.site.name]}
            records[key] = merged
            patient.records.append(merged)
    for patient in patients.values():
        patient.sites.sort()
    return [patients[k] for k in sorted(patients)]


def merge_counts(answers: Sequence[SiteAnswer]) -> dict[str, MergedCount]:
    totals = {kind: MergedCount() for kind in COUNT_KINDS}
    for answer in answers:
        if answer.status != "ok":
            continue
        for kind in COUNT_KINDS:
            value = answer.counts.get(kind, 0)
            if isinstance(value, int):
                totals[kind].known += value
            else:
                totals[kind].suppressed_sites += 1
    return totals
