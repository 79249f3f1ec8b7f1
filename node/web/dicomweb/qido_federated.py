"""The other sites' part of a QIDO-RS answer: one federated query, rows as DICOM JSON.

The home node's own matches come from its store (``qido_local``) with every attribute;
the federation is asked with the query model's fields only (patient, modality, body
part, dates, description, sex), each site answering under its own policy, and its rows
are shown with what that policy released — keyed UIDs and the study month when
de-identified. Study/series UIDs in the request are matched here, on the home side (sites
only know keyed UIDs as a function of their stored ones). A filter the federation cannot
evaluate makes the answer local-only, and the search record says so. A PatientID that
is a federation pseudonym is matched as one (OHIF's "studies of this patient" panel asks
with the PatientID a de-identified row showed).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset

from node.pacs.qr_attributes import QueryLevel
from node.query.dicom_federation import answers_as_studies
from node.query.dicom_retrieve import SeriesTarget
from node.query.fanout import SiteAnswer
from node.query.model import _PSEUDONYM as PSEUDONYM, FederatedQuery, QueryError
from node.query.service import FederatedQueryError, FederatedQueryService, SiteStatus

from .dicom_json import flat_json
from .qido_query import QidoRequest
from .remote_index import RemoteIndex, RemoteSeries
from .requester import Requester
from .searches import SearchRecord

FEDERATED_KEYS = {"PatientID", "IssuerOfPatientID", "PatientName", "ModalitiesInStudy",
                  "Modality", "StudyDate", "StudyDescription", "BodyPartExamined",
                  "PatientSex", "StudyInstanceUID", "SeriesInstanceUID"}
LEVELS = {QueryLevel.STUDY: "study", QueryLevel.SERIES: "series"}


def query_service(node: Any) -> FederatedQueryService | None:
    service = node.service("federated-query") if node.membership is not None else None
    return service if isinstance(service, FederatedQueryService) else None


def _matches(row: dict[str, Any], keyed: str, real: str, wanted: str | None) -> bool:
    if not wanted:
        return True
    return any(uid in (row.get(keyed), row.get(real)) for uid in wanted.split("\\"))


def series_dataset(row: dict[str, Any], answer: SiteAnswer) -> Dataset:
    """One SERIES-level result of another site, tagged with that site."""
    ds = Dataset()
    identified = answer.level == "identified"
    ds.StudyInstanceUID = (row.get("study_uid_real") if identified else None) or row["study_uid"]
    ds.SeriesInstanceUID = (row.get("series_uid_real") if identified else None) or row["series_uid"]
    ds.Modality = row.get("modality") or ""
    ds.BodyPartExamined = row.get("body_part") or ""
    if row.get("series_number") is not None:
        ds.SeriesNumber = int(row["series_number"])
    ds.NumberOfSeriesRelatedInstances = int(row.get("instances") or 0)
    ds.PatientID = row.get("patient_id") if identified else row["patient"]
    if identified:
        ds.SeriesDescription = row.get("series_description") or ""
        ds.StudyDate = row.get("study_date") or ""
    ds.RetrieveAETitle = answer.site.dicom_ae
    ds.InstitutionName = answer.site.name[:64]
    return ds


def _remote_entry(row: dict[str, Any], answer: SiteAnswer, ds: Dataset) -> RemoteSeries:
    target = SeriesTarget(answer.site.node_id, row["series_uid"], answer.level == "identified",
                          int(row.get("instances") or 0))
    return RemoteSeries(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), target,
                        answer.site.dicom_ae, answer.site.name)


def rows_as_json(answers: list[SiteAnswer], level: QueryLevel, filters: dict[str, str],
                 index: RemoteIndex) -> list[dict[str, Any]]:
    """Remote rows matching the request's UIDs, as DICOM JSON; series go into ``index``."""
    study, series = filters.get("StudyInstanceUID"), filters.get("SeriesInstanceUID")
    out: list[dict[str, Any]] = []
    for answer in answers:
        if answer.status != "ok":
            continue
        rows = [r for r in answer.rows
                if _matches(r, "study_uid", "study_uid_real", study)
                and _matches(r, "series_uid", "series_uid_real", series)]
        if level is QueryLevel.STUDY:
            out += [flat_json(ds) for ds in answers_as_studies([replace(answer, rows=rows)])]
            continue
        for row in rows:
            if "series_uid" not in row:
                continue
            ds = series_dataset(row, answer)
            index.add(_remote_entry(row, answer, ds))
            out.append(flat_json(ds))
    return out


def by_pseudonym(fq: FederatedQuery) -> FederatedQuery:
    """A PatientID that is a federation pseudonym (what a de-identified row shows, and
    what OHIF asks for to list "other studies of this patient") is matched as the
    pseudonym at every site, not taken for a home patient ID and pseudonymised again."""
    if fq.patient_id is not None and fq.issuer is None and PSEUDONYM.fullmatch(fq.patient_id):
        return replace(fq, patient_pseudonym=fq.patient_id, patient_id=None)
    return fq


async def federated_qido(node: Any, q: QidoRequest, who: Requester,
                         index: RemoteIndex) -> tuple[list[dict[str, Any]], SearchRecord | None]:
    """Other sites' matches and the search's per-site record (None: not a federation member)."""
    service = query_service(node)
    if service is None:
        return [], None
    if q.level not in LEVELS:
        return [], SearchRecord(who.handle, q.level.value.lower(), [], False, 0.0,
                                note="instance-level searches answer from this node only; "
                                     "other sites' instances are listed once the series is "
                                     "opened")
    unsupported = sorted(k for k, v in q.filters.items() if v and k not in FEDERATED_KEYS)
    if unsupported:
        return [], SearchRecord(who.handle, LEVELS[q.level], [], True, 0.0,
                                note="other sites not asked: the federation cannot filter on "
                                     + ", ".join(unsupported))
    try:
        fq = by_pseudonym(replace(FederatedQuery.from_cfind(q.identifier), level=LEVELS[q.level],
                                  limit=min(10000, q.offset + q.limit)))
        answer = await service.query(fq, user=who.user, purpose=who.purpose)
    except (QueryError, FederatedQueryError) as exc:
        return [], SearchRecord(who.handle, LEVELS[q.level], [], True, 0.0,
                                note=f"other sites not asked: {exc}")
    me = node.identity.node_id_hex
    others = [a for a in answer.answers if a.site.node_id != me]
    sites = [SiteStatus.of(a) for a in answer.answers]
    partial = any(s.status != "ok" for s in sites)
    record = SearchRecord(who.handle, LEVELS[q.level], sites, partial, answer.elapsed_ms)
    return rows_as_json(others, q.level, q.filters, index), record
