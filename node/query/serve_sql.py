"""A federated query run on this site's store, shaped to the level the policy allows.

The SQL is built here (pure) and run by ``run_query`` (the edge). PHI never reaches
Python for a non-identified answer: the federation pseudonym is a stored, indexed
column (``patients.pseudonym``, computed by the store from PatientID + issuer with the
linkage key), and the PHI tables are joined only when the answer level is
``identified`` (or a name / description filter needs them).
De-identified rows carry keyed UIDs, the study month instead of the date, and the age
in years; never names, IDs, accession numbers or descriptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from node.deid.actions import keyed_uid
from node.policy import Level, suppress_count
from node.store.db import MetadataStore
from node.store.dialect import SQLITE, Dialect

from .model import FederatedQuery

PSN = "p.pseudonym"
_PATIENT_PHI = "JOIN patient_phi pp ON pp.patient_id = p.id"
_STUDY_PHI = "LEFT JOIN study_phi sp ON sp.study_id = s.id"
_STUDIES = "studies s JOIN patients p ON p.id = s.patient_id"
_SERIES = "series se JOIN studies s ON s.id = se.study_id JOIN patients p ON p.id = s.patient_id"
# A named patient on PostgreSQL: the plan starts at that patient's row and walks down.
# Subqueries with OFFSET 0 are planned on their own (the patient by its pseudonym index)
# and a LATERAL one can only be a nested loop over the patient's own studies and
# series (index probes), whatever the statistics say. On tables never analyzed (right
# after a large ingest) the plain joins were hash joins over every study: 17 ms at 10^6
# instances, linear in the archive, instead of 0.7 ms (issue 12). SQLite's planner
# always nests loops; it has no LATERAL.
_PATIENT_STUDIES = ("(SELECT * FROM patients WHERE pseudonym = ? OFFSET 0) p CROSS JOIN "
                    "LATERAL (SELECT * FROM studies WHERE patient_id = p.id OFFSET 0) s")
_PATIENT_SERIES = (f"{_PATIENT_STUDIES} CROSS JOIN LATERAL "
                   "(SELECT * FROM series WHERE study_id = s.id OFFSET 0) se")
_AGG_SERIES = ("(SELECT group_concat(x.modality) FROM study_modalities x "
               "WHERE x.study_id = s.id AND x.modality <> '')",
               "(SELECT group_concat(DISTINCT x.body_part) FROM series x WHERE x.study_id = s.id)",
               "s.num_series")


@dataclass
class LocalResult:
    level: Level
    counts: dict[str, int | str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False


def _like(pattern: str) -> str:
    """DICOM wildcards (* ?) as a LIKE pattern with '\\' escaping LIKE's own."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _joins(q: FederatedQuery, identified: bool) -> str:
    """PHI tables only when a filter or an identified answer needs them."""
    joins = []
    if identified or q.patient_name is not None:
        joins.append(_PATIENT_PHI)
    if identified or q.description is not None:
        joins.append(_STUDY_PHI)
    return " ".join(joins)


def where_clause(q: FederatedQuery, *, series_row: bool,
                 dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    """WHERE over the study base (series_row: a series row ``se`` is in scope). Every
    filter has an index: the stored pseudonym, study_modalities (modality, date),
    series (modality, body part) and (modality, study date), studies (date)."""
    terms: list[str] = []
    params: list[Any] = []
    if q.patient_pseudonym is not None:
        terms.append(f"{PSN} = ?")
        params.append(q.patient_pseudonym)
    if q.patient_name is not None:
        terms.append(dialect.nocase_like("pp.name", "\\"))
        params.append(_like(q.patient_name))
    date_from = q.study_date_from.strftime("%Y%m%d") if q.study_date_from else None
    date_to = q.study_date_to.strftime("%Y%m%d") if q.study_date_to else None

    def date_terms(alias: str) -> None:
        if date_from is not None:
            terms.append(f"{alias}.study_date >= ?")
            params.append(date_from)
        if date_to is not None:
            terms.append(f"{alias}.study_date <> '' AND {alias}.study_date <= ?")
            params.append(date_to)

    if series_row:
        for column, value in (("modality", q.modality), ("body_part", q.body_part)):
            if value is not None:
                terms.append(f"se.{column} = ?")
                params.append(value)
        if q.modality is not None:
            date_terms("se")  # the series' copy of its study date: index (modality, date)
    elif q.body_part is not None:
        inner = "x.body_part = ?" if q.modality is None else "x.modality = ? AND x.body_part = ?"
        terms.append(f"EXISTS (SELECT 1 FROM series x WHERE x.study_id = s.id AND {inner})")
        params.extend([v for v in (q.modality, q.body_part) if v is not None])
    elif q.modality is not None:
        terms.append("s.id IN (SELECT x.study_id FROM study_modalities x WHERE x.modality = ?"
                     + (" AND x.study_date >= ?" if date_from is not None else "")
                     + (" AND x.study_date <> '' AND x.study_date <= ?" if date_to else "")
                     + ")")
        params.extend([v for v in (q.modality, date_from, date_to) if v is not None])
    date_terms("s")
    if q.description is not None:
        terms.append(dialect.nocase_like("sp.description", "\\"))
        params.append("%" + _like(q.description) + "%")
    if q.sex is not None:
        terms.append("p.sex = ?")
        params.append(q.sex)
    age = "(CAST(substr(s.study_date, 1, 4) AS INTEGER) - p.birth_year)"
    if q.age_min is not None or q.age_max is not None:
        terms.append("p.birth_year IS NOT NULL AND s.study_date <> ''")
    if q.age_min is not None:
        terms.append(f"{age} >= ?")
        params.append(q.age_min)
    if q.age_max is not None:
        terms.append(f"{age} <= ?")
        params.append(q.age_max)
    return ("WHERE " + " AND ".join(terms)) if terms else "", params


def _base(q: FederatedQuery, series: bool, dialect: Dialect) -> tuple[str, list[Any]]:
    """The FROM of a query, studies (and their series) with their patient, and its
    parameters (they come before the WHERE's)."""
    if q.patient_pseudonym is not None and dialect.postgres:
        return _PATIENT_SERIES if series else _PATIENT_STUDIES, [q.patient_pseudonym]
    return _SERIES if series else _STUDIES, []


def counts_sql(q: FederatedQuery, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    base, first = _base(q, True, dialect)
    where, params = where_clause(q, series_row=True, dialect=dialect)
    return (f"SELECT count(DISTINCT p.id), count(DISTINCT s.id), count(DISTINCT se.id) "
            f"FROM {base} {_joins(q, False)} {where}", [*first, *params])


def rows_sql(q: FederatedQuery, identified: bool,
             dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    """Rows at the query's level; one more than ``limit`` to detect truncation."""
    base, first = _base(q, q.level == "series", dialect)
    where, params = where_clause(q, series_row=q.level == "series", dialect=dialect)
    params = [*first, *params]
    joins = _joins(q, identified)
    phi_patient = ", pp.pid, pp.issuer, pp.name, pp.birth_date" if identified else ""
    phi_study = ", sp.accession, sp.description" if identified else ""
    if q.level == "patient":
        group = ", pp.pid, pp.issuer, pp.name, pp.birth_date" if identified else ""
        sql = (f"SELECT {PSN} AS psn, p.sex, p.birth_year, count(DISTINCT s.id), "
               f"max(s.study_date), (SELECT group_concat(DISTINCT x.modality) "
               f"FROM study_modalities x JOIN studies y ON y.id = x.study_id "
               f"WHERE y.patient_id = p.id AND x.modality <> ''){phi_patient} "
               f"FROM {base} {joins} {where} "
               f"GROUP BY p.id, {PSN}, p.sex, p.birth_year{group} ORDER BY psn, p.id")
    elif q.level == "study":
        sql = (f"SELECT {PSN} AS psn, p.sex, p.birth_year, s.study_uid, s.study_date, "
               f"{', '.join(_AGG_SERIES)}{phi_patient}{phi_study} "
               f"FROM {base} {joins} {where} ORDER BY psn, s.study_date, s.study_uid")
    else:
        phi_series = (", (SELECT description FROM series_phi WHERE series_id = se.id)"
                      if identified else "")
        sql = (f"SELECT {PSN} AS psn, p.sex, p.birth_year, s.study_uid, s.study_date, "
               f"se.series_uid, se.modality, se.body_part, se.series_number, "
               f"se.num_instances{phi_patient}{phi_study}{phi_series} "
               f"FROM {base} {joins} {where} ORDER BY psn, s.study_date, s.study_uid, "
               f"se.series_number, se.series_uid")
    return sql + " LIMIT ?", [*params, q.limit + 1]


# -- shaping rows (pure) -----------------------------------------------------------
def _age(study_date: str, birth_year: int | None) -> int | None:
    if birth_year is None or not study_date[:4].isdigit():
        return None
    return int(study_date[:4]) - birth_year


def _month(study_date: str) -> str:
    return f"{study_date[:4]}-{study_date[4:6]}" if len(study_date) >= 6 else ""


def _codes(text: str | None) -> list[str]:
    return sorted({c for c in (text or "").split(",") if c})


def shape_row(q: FederatedQuery, row: tuple[Any, ...], identified: bool,
              uid_key: bytes) -> dict[str, Any]:
    """One SQL row as an answer row; PHI keys appear only when ``identified``."""
    psn, sex, birth_year = row[0], row[1], row[2]
    out: dict[str, Any] = {"patient": psn, "sex": sex or ""}
    if q.level == "patient":
        n_studies, last_date, modalities = row[3:6]
        out.update(studies=n_studies, modalities=_codes(modalities),
                   age=_age(last_date or "", birth_year))
        phi = row[6:]
    else:
        study_uid, study_date = row[3], row[4] or ""
        out.update(study_uid=keyed_uid(study_uid, uid_key), study_month=_month(study_date),
                   age=_age(study_date, birth_year))
        if q.level == "study":
            out.update(modalities=_codes(row[5]), body_parts=_codes(row[6]), series=row[7])
            phi = row[8:]
        else:
            out.update(series_uid=keyed_uid(row[5], uid_key), modality=row[6],
                       body_part=row[7], series_number=row[8], instances=row[9])
            phi = row[10:]
        if identified:
            out.update(study_uid_real=study_uid, study_date=study_date)
            if q.level == "series":
                out["series_uid_real"] = row[5]
    if identified:
        names = ["patient_id", "issuer", "patient_name", "birth_date"]
        if q.level != "patient":
            names += ["accession", "description"]
        if q.level == "series":
            names.append("series_description")
        out.update(zip(names, phi))
    return out


# -- the edge ----------------------------------------------------------------------
class AnswerRows:
    """An answer's rows, read from the store and shaped as they are iterated (at most
    ``q.limit``; raw rows are never collected). ``truncated`` is known once iteration
    ended; ``aclose`` releases the store's reader early."""

    def __init__(self, store: MetadataStore, q: FederatedQuery, identified: bool,
                 uid_key: bytes) -> None:
        sql, params = rows_sql(q, identified, store.dialect)
        self._rows = store.stream(sql, params)
        self._q, self._identified, self._uid_key = q, identified, uid_key
        self.truncated = False
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for r in self._rows:
                if self.read == self._q.limit:
                    self.truncated = True
                    break
                self.read += 1
                yield shape_row(self._q, tuple(r), self._identified, self._uid_key)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._rows.aclose()


@dataclass
class OpenAnswer:
    """A query answered up to its rows: the level, the counts, and the rows to read
    (None for a count-only answer)."""

    level: Level
    counts: dict[str, int | str]
    rows: AnswerRows | None


async def open_query(store: MetadataStore, q: FederatedQuery, level: Level, *,
                     linkage_key: bytes, uid_key: bytes, threshold: int) -> OpenAnswer:
    """Run ``q`` (already pseudonymised) at ``level`` (never DENY here): the counts now,
    the rows as the caller reads them."""
    if level is Level.DENY:
        raise ValueError("a denied query must not be run")
    await store.ensure_pseudonyms(linkage_key)
    sql, params = counts_sql(q, store.dialect)
    found = await store.fetchone(sql, params)
    exact = {k: int(v) for k, v in zip(("patients", "studies", "series"), found or (0, 0, 0))}
    if level is Level.COUNT:
        return OpenAnswer(level, {k: suppress_count(v, threshold) for k, v in exact.items()},
                          None)
    return OpenAnswer(level, dict(exact),
                      AnswerRows(store, q, level is Level.IDENTIFIED, uid_key))


async def run_query(store: MetadataStore, q: FederatedQuery, level: Level, *,
                    linkage_key: bytes, uid_key: bytes, threshold: int) -> LocalResult:
    """``open_query`` with every row read (the home site's own answer)."""
    answer = await open_query(store, q, level, linkage_key=linkage_key, uid_key=uid_key,
                              threshold=threshold)
    if answer.rows is None:
        return LocalResult(answer.level, answer.counts)
    rows = [r async for r in answer.rows]
    return LocalResult(answer.level, answer.counts, rows, truncated=answer.rows.truncated)
