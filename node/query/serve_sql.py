"""A federated query run on this site's SQLite, shaped to the level the policy allows.

The SQL is built here (pure) and run by ``run_query`` (the edge). PHI never reaches
Python for a non-identified answer: the federation pseudonym is computed inside SQLite
by a function over ``patient_phi`` (PatientID + issuer, keyed with the linkage key), and
the PHI columns themselves are selected only when the answer level is ``identified``.
De-identified rows carry keyed UIDs, the study month instead of the date, and the age
in years; never names, IDs, accession numbers or descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.deid.actions import keyed_uid, pseudonym
from node.policy import Level, suppress_count
from node.store.db import MetadataStore

from .model import FederatedQuery

PSN_FUNCTION = "medfed_pseudonym"
PSN = f"{PSN_FUNCTION}(pp.pid, pp.issuer)"
_BASE = ("FROM studies s JOIN patients p ON p.id = s.patient_id "
         "JOIN patient_phi pp ON pp.patient_id = p.id "
         "LEFT JOIN study_phi sp ON sp.study_id = s.id")
_SERIES_BASE = "FROM series se JOIN studies s ON s.id = se.study_id " + _BASE[len("FROM studies s "):]
_AGG_SERIES = ("(SELECT group_concat(DISTINCT x.modality) FROM series x WHERE x.study_id = s.id)",
               "(SELECT group_concat(DISTINCT x.body_part) FROM series x WHERE x.study_id = s.id)",
               "(SELECT count(*) FROM series x WHERE x.study_id = s.id)")


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


def where_clause(q: FederatedQuery, *, series_row: bool) -> tuple[str, list[Any]]:
    """WHERE over the study base (series_row: a series row ``se`` is in scope)."""
    terms: list[str] = []
    params: list[Any] = []
    if q.patient_pseudonym is not None:
        terms.append(f"{PSN} = ?")
        params.append(q.patient_pseudonym)
    if q.patient_name is not None:
        terms.append("pp.name LIKE ? ESCAPE '\\'")
        params.append(_like(q.patient_name))
    series_terms: list[str] = []
    for column, value in (("modality", q.modality), ("body_part", q.body_part)):
        if value is not None:
            series_terms.append(f"{{a}}.{column} = ?")
            params.append(value)
    if series_terms:
        if series_row:
            terms.extend(t.format(a="se") for t in series_terms)
        else:
            inner = " AND ".join(t.format(a="x") for t in series_terms)
            terms.append(f"EXISTS (SELECT 1 FROM series x WHERE x.study_id = s.id AND {inner})")
    if q.study_date_from is not None:
        terms.append("s.study_date >= ?")
        params.append(q.study_date_from.strftime("%Y%m%d"))
    if q.study_date_to is not None:
        terms.append("s.study_date <> '' AND s.study_date <= ?")
        params.append(q.study_date_to.strftime("%Y%m%d"))
    if q.description is not None:
        terms.append("sp.description LIKE ? ESCAPE '\\'")
        params.append("%" + _like(q.description) + "%")
    if q.sex is not None:
        terms.append("p.sex = ?")
        params.append(q.sex)
    age = "(CAST(substr(s.study_date, 1, 4) AS INTEGER) - p.birth_year)"
    if q.age_min is not None:
        terms.append(f"p.birth_year IS NOT NULL AND {age} >= ?")
        params.append(q.age_min)
    if q.age_max is not None:
        terms.append(f"p.birth_year IS NOT NULL AND {age} <= ?")
        params.append(q.age_max)
    return ("WHERE " + " AND ".join(terms)) if terms else "", params


def counts_sql(q: FederatedQuery) -> tuple[str, list[Any]]:
    where, params = where_clause(q, series_row=True)
    return (f"SELECT count(DISTINCT p.id), count(DISTINCT s.id), count(DISTINCT se.id) "
            f"{_SERIES_BASE} {where}", params)


def rows_sql(q: FederatedQuery, identified: bool) -> tuple[str, list[Any]]:
    """Rows at the query's level; one more than ``limit`` to detect truncation."""
    where, params = where_clause(q, series_row=q.level == "series")
    phi_patient = ", pp.pid, pp.issuer, pp.name, pp.birth_date" if identified else ""
    phi_study = ", sp.accession, sp.description" if identified else ""
    if q.level == "patient":
        sql = (f"SELECT {PSN} AS psn, p.sex, p.birth_year, count(DISTINCT s.id), "
               f"max(s.study_date), (SELECT group_concat(DISTINCT x.modality) FROM series x "
               f"JOIN studies y ON y.id = x.study_id WHERE y.patient_id = p.id){phi_patient} "
               f"{_BASE} {where} GROUP BY p.id ORDER BY psn")
    elif q.level == "study":
        sql = (f"SELECT {PSN} AS psn, p.sex, p.birth_year, s.study_uid, s.study_date, "
               f"{', '.join(_AGG_SERIES)}{phi_patient}{phi_study} "
               f"{_BASE} {where} ORDER BY psn, s.study_date, s.study_uid")
    else:
        phi_series = (", (SELECT description FROM series_phi WHERE series_id = se.id)"
                      if identified else "")
        sql = (f"SELECT {PSN} AS psn, p.sex, p.birth_year, s.study_uid, s.study_date, "
               f"se.series_uid, se.modality, se.body_part, se.series_number, "
               f"(SELECT count(*) FROM instances i WHERE i.series_id = se.id)"
               f"{phi_patient}{phi_study}{phi_series} "
               f"{_SERIES_BASE} {where} ORDER BY psn, s.study_date, s.study_uid, "
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
async def run_query(store: MetadataStore, q: FederatedQuery, level: Level, *,
                    linkage_key: bytes, uid_key: bytes, threshold: int) -> LocalResult:
    """Run ``q`` (already pseudonymised) and answer at ``level`` (never DENY here)."""
    if level is Level.DENY:
        raise ValueError("a denied query must not be run")
    await store.db.create_function(
        PSN_FUNCTION, 2, lambda pid, issuer: pseudonym(pid or "", issuer or "", linkage_key),
        deterministic=True)
    sql, params = counts_sql(q)
    found = await store.fetchone(sql, params)
    exact = dict(zip(("patients", "studies", "series"), found or (0, 0, 0)))
    if level is Level.COUNT:
        return LocalResult(level, {k: suppress_count(int(v), threshold) for k, v in exact.items()})
    identified = level is Level.IDENTIFIED
    sql, params = rows_sql(q, identified)
    rows = await store.fetchall(sql, params)
    shaped = [shape_row(q, tuple(r), identified, uid_key) for r in rows[:q.limit]]
    return LocalResult(level, dict(exact), shaped, truncated=len(rows) > q.limit)
