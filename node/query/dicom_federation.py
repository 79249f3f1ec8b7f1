"""The DICOM face of the federation: a viewer C-FINDs the FEDERATION AE title and sees all sites.

C-FIND to the node's own AE title is answered from its own SQLite as before. C-FIND to
``[dicom] federation_ae_title`` runs a federated query and answers one STUDY-level
response per merged study, tagged with the site that holds it (InstitutionName = the
site's name). RetrieveAETitle names an AE title that THIS node answers — the federation
AE title — because a viewer retrieves from the node it queried: C-GET/C-MOVE there
fetches the study from its site. (Naming the owner's AE title sent viewers to an AE no
one they can reach serves.) De-identified rows carry the
pseudonym as PatientID, the keyed StudyInstanceUID and StudyDate = the first day of the
study month (sites release only the month); identified rows carry real values.

Who is asking: a DICOM association carries only the calling AE title, which the node
has already checked against its allowlist. ``[dicom.users]`` maps it to a local user;
the request is made for that user (role, department from the record; purpose: the
first the record allows). A calling AE without a mapping, or mapped to an unknown or
disabled user, is refused at the federation AE title (audited as ``user.refused``).
C-GET/C-MOVE to the node's own AE title retrieve from the local store; to the
federation AE title they fetch the result's series from the sites first
(``dicom_retrieve``), de-identified unless the owner's policy released identified data.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from ..pacs.fast_identifier import FastIdentifier

from node.pacs.scp import QueryRefused, RetrieveItem
from node.pacs import status
from node.pacs.response_wire import ResponseRow
from node.users import User, UserRefused, resolve_user

from .dicom_retrieve import FederatedRetrieve
from .fanout import SiteAnswer
from .model import FederatedQuery, QueryError
from .service import FederatedQueryError, FederatedQueryService


def dicom_user(node: Any, calling_ae: str) -> User:
    """The local user a calling AE title acts for; QueryRefused (audited) otherwise."""
    name = node.cfg.dicom.user_for(calling_ae)
    if name is None:
        if node.audit is not None:
            node.audit.append("user.refused", calling_ae[:16], "refused", code="unmapped_ae",
                              via="dicom")
        raise QueryRefused(f"calling AE title {calling_ae!r} acts for no local user; add it "
                           f"under [dicom.users] in the node's config", status.UNABLE_TO_PROCESS)
    try:
        user = resolve_user(node.users, name, audit=node.audit, via="dicom")
    except UserRefused as exc:
        raise QueryRefused(exc.reason, status.UNABLE_TO_PROCESS) from None
    if not user.purposes:
        raise QueryRefused(f"user {name!r} may state no purpose", status.UNABLE_TO_PROCESS)
    return user


def _study_dataset(row: dict[str, Any], answer: SiteAnswer, retrieve_ae: str | None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    identified = answer.level == "identified"
    ds.PatientID = row.get("patient_id") if identified else row["patient"]
    if identified:
        ds.IssuerOfPatientID = row.get("issuer", "")
        ds.PatientName = row.get("patient_name", "")
        ds.PatientBirthDate = row.get("birth_date", "")
        ds.AccessionNumber = row.get("accession", "")
        ds.StudyDescription = row.get("description", "")
        ds.StudyInstanceUID = row.get("study_uid_real") or row["study_uid"]
        ds.StudyDate = row.get("study_date", "")
    else:
        ds.StudyInstanceUID = row["study_uid"]
        month = str(row.get("study_month", ""))
        ds.StudyDate = month.replace("-", "") + "01" if month else ""
    ds.PatientSex = row.get("sex", "")
    ds.ModalitiesInStudy = list(row.get("modalities", [])) or ""
    ds.NumberOfStudyRelatedSeries = int(row.get("series", 0))
    ds.RetrieveAETitle = retrieve_ae or answer.site.dicom_ae
    ds.InstitutionName = answer.site.name[:64]
    return ds


def answers_as_studies(answers: list[SiteAnswer], retrieve_ae: str | None = None
                       ) -> list[Dataset]:
    """One C-FIND response per (site, study row); sites without rows add nothing.
    ``retrieve_ae``: the AE title of this node that retrieves federated results (for
    DICOM C-FIND answers); None names each owner's own AE title (DICOMweb)."""
    out: list[Dataset] = []
    for answer in answers:
        if answer.status != "ok":
            continue
        for row in answer.rows:
            if "study_uid" in row:
                out.append(_study_dataset(row, answer, retrieve_ae))
    return out


class FederationDicomBackend:
    """NodeService 'dicom-backend': local C-FIND/C-GET, plus the federation AE title."""

    name = "dicom-backend"

    def __init__(self) -> None:
        self._node: Any = None
        self._retrieve: FederatedRetrieve | None = None

    async def start(self, node: Any) -> None:
        self._node = node
        self._retrieve = FederatedRetrieve(node)

    async def stop(self) -> None:
        self._node = None

    def _running(self) -> Any:
        if self._node is None:
            raise QueryRefused("node is not running", status.UNABLE_TO_PROCESS)
        return self._node

    def _query_service(self, node: Any) -> FederatedQueryService:
        service = node.service("federated-query")
        if not isinstance(service, FederatedQueryService):
            raise QueryRefused("this node does not run federated queries",
                               status.UNABLE_TO_PROCESS)
        return service

    def find_sync(self, identifier: "Dataset | FastIdentifier", model: str, *, called_ae: str,
                  calling_ae: str) -> list[ResponseRow] | None:
        """This node's own C-FIND answered in the association's thread; None for the
        federation AE title (the SCP then awaits :meth:`find`)."""
        node = self._running()
        if called_ae == node.cfg.dicom.federation_ae_title:
            return None
        return node.local.find_sync(identifier, model, called_ae=called_ae,
                                    calling_ae=calling_ae)

    async def find(self, identifier: Dataset, model: str, *, called_ae: str,
                   calling_ae: str) -> list[Dataset] | list[ResponseRow]:
        node = self._running()
        if called_ae != node.cfg.dicom.federation_ae_title:
            return await node.local.find(identifier, model, called_ae=called_ae,
                                         calling_ae=calling_ae)
        service = self._query_service(node)
        user = dicom_user(node, calling_ae)
        try:
            query = FederatedQuery.from_cfind(identifier)
            if query.level != "study":
                raise QueryError("the federation AE title answers STUDY level only")
            answer = await service.query(query, user=user, purpose=user.purposes[0])
        except QueryError as exc:
            raise QueryRefused(str(exc)) from None
        except FederatedQueryError as exc:
            raise QueryRefused(str(exc), status.UNABLE_TO_PROCESS) from None
        return answers_as_studies(answer.answers, node.cfg.dicom.federation_ae_title)

    async def select(self, identifier: Dataset, model: str, *, called_ae: str = "",
                     calling_ae: str = "") -> list[RetrieveItem]:
        node = self._running()
        if self._retrieve is None:
            return await node.local.select(identifier, model)
        if called_ae != node.cfg.dicom.federation_ae_title:
            items = await node.local.select(identifier, model)
            if items or node.cfg.dicom.user_for(calling_ae) is None:
                return items
            # Not held here: a study found through the federation, asked for by this
            # node's own AE title, is fetched like one asked of the federation AE title,
            # rather than "Success" with nothing sent.
            try:
                return await self._retrieve.select(identifier, service=self._query_service(node),
                                                   user=dicom_user(node, calling_ae))
            except (QueryRefused, FederatedQueryError):
                return items
        try:
            return await self._retrieve.select(identifier, service=self._query_service(node),
                                               user=dicom_user(node, calling_ae))
        except FederatedQueryError as exc:
            raise QueryRefused(str(exc), status.UNABLE_TO_PROCESS) from None

    def release(self, items: list[RetrieveItem]) -> None:
        """The SCP finished sending ``items``: free the local pin or the scratch folder."""
        node = self._node
        if self._retrieve is not None:
            self._retrieve.release(items)
        if node is not None:
            node.local.release(items)
