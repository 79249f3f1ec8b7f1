"""Shared set-up for the federated query tests: a real federation with synthetic data."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config.model import NodeConfig
from node.deid.actions import keyed_uid, pseudonym
from node.node import Node
from node.query.dicom_federation import FederationDicomBackend
from node.query.service import FederatedQueryService
from node.store.ingest_local import ingest_dataset
from node.synth.generate import PhiOverrides, SynthSpec, iter_datasets
from node.synth.plan import plan_patient
from node.testing.federation import LocalFederation, start_federation

# Patients 1-4 at site 0, 3-6 at site 1, 4-7 at site 2, 5-8 at site 3: patient 4 is at
# sites 0, 1 and 2; patients 5 and 6 at sites 1, 2 and 3.
OFFSETS = (0, 2, 3, 4)
PATIENTS = 4
SEED = 11

DENY_ALL: dict[str, Any] = {"rule": []}


@dataclass
class SiteData:
    """What was ingested at one site, as the federation should see it."""

    pseudonyms: set[str] = field(default_factory=set)
    keyed_studies: dict[str, str] = field(default_factory=dict)   # keyed uid -> body part
    phi: set[str] = field(default_factory=set)                    # PHI strings planted


def patient_id(index: int) -> str:
    """PatientID of global patient ``index`` (the same at every site)."""
    return plan_patient(SynthSpec(seed=SEED), index).patient_id


def tune(policies: dict[str, dict[str, Any]], *, deadline_s: float = 15.0,
         hedge_after_s: float = 5.0) -> Callable[[NodeConfig], NodeConfig]:
    def configure(cfg: NodeConfig) -> NodeConfig:
        fed = dataclasses.replace(cfg.federation, query_deadline_s=deadline_s,
                                  hedge_after_s=hedge_after_s)
        return dataclasses.replace(cfg, federation=fed,
                                   policy=policies.get(cfg.name, cfg.policy))
    return configure


def query_services(i: int, name: str, *, dicom: bool = False) -> list[Any]:
    services: list[Any] = [FederatedQueryService()]
    if dicom:
        services.append(FederationDicomBackend())
    return services


async def load_site(node: Node, index: int, *, phi: PhiOverrides | None = None) -> SiteData:
    """Ingest synthetic studies (1 slice per series, 16x16) and record what went in."""
    assert node.membership is not None
    keys = node.membership.secrets
    data = SiteData()
    for ds in iter_datasets(patients=PATIENTS, studies=1, series=2, slices=1, rows=16, cols=16,
                            seed=SEED, site_seed=index + 1, patient_offset=OFFSETS[index],
                            phi=phi):
        await ingest_dataset(node.store, node.files, ds)
        data.pseudonyms.add(pseudonym(ds.PatientID, "", keys.linkage_key))
        data.keyed_studies[keyed_uid(ds.StudyInstanceUID, keys.uid_key)] = ds.BodyPartExamined
        data.phi.update({str(ds.PatientName), ds.PatientID, ds.PatientBirthDate,
                         ds.AccessionNumber, ds.StudyDescription})
    return data


async def federation(tmp_path: Path, names: Sequence[str], *,
                     policies: dict[str, dict[str, Any]] | None = None,
                     services: Callable[[int, str], Sequence[Any]] = query_services,
                     with_dicom: bool = False, phi: dict[int, PhiOverrides] | None = None,
                     deadline_s: float = 15.0, hedge_after_s: float = 5.0
                     ) -> tuple[LocalFederation, list[SiteData]]:
    fed = await start_federation(tmp_path, names, services=services, with_dicom=with_dicom,
                                 configure=tune(policies or {}, deadline_s=deadline_s,
                                                hedge_after_s=hedge_after_s),
                                 bootstrap=False)
    data = [await load_site(node, i, phi=(phi or {}).get(i)) for i, node in enumerate(fed.nodes)]
    return fed, data


def audit_entries(node: Node, action: str = "query.serve") -> list[dict[str, Any]]:
    lines = node.cfg.audit_path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]
