"""Synthetic data spread over the simulated sites, with the truth of where it is.

Patients are planned by ``node.synth``: a patient's identity depends only on the seed and
its index, so the same patient planted at several sites (different ``site_seed``) links
across them by pseudonym, as a real patient seen at several hospitals does. Some patients
are shared by several sites, the rest belong to one. Images are tiny (16x16, one slice)
so planting 100 sites takes seconds; they are real Part-10 files in the node's store.

``plan_layout`` / ``ground_truth`` are pure; ``plant`` is the edge (files + SQLite).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from node.deid.actions import pseudonym
from node.node import Node
from node.store.ingest_local import ingest_dataset
from node.synth.generate import iter_datasets
from node.synth.plan import PhiOverrides, SeriesPlan, SynthSpec, plan

MODALITIES = ("CT", "MR")


@dataclass(frozen=True)
class Placement:
    """One patient's series at one site."""

    site: int
    patient: int          # synthetic patient index (identity = seed + index)
    modality: str


@dataclass(frozen=True)
class SeriesFact:
    site: int
    patient: int
    pseudonym: str
    modality: str
    body_part: str
    study_uid: str
    series_uid: str


@dataclass
class GroundTruth:
    """What is where. Queries are scored against it, restricted to the sites that are up."""

    facts: list[SeriesFact] = field(default_factory=list)

    def sites_with_patient(self, psn: str) -> set[int]:
        return {f.site for f in self.facts if f.pseudonym == psn}

    def sites_matching(self, modality: str, body_part: str) -> set[int]:
        return {f.site for f in self.facts
                if f.modality == modality and f.body_part == body_part}

    def expected(self, *, modality: str | None = None, body_part: str | None = None,
                 psn: str | None = None, sites: Iterable[int] | None = None
                 ) -> set[tuple[int, str]]:
        """(site, pseudonym) pairs a complete answer must contain."""
        allowed = None if sites is None else set(sites)
        return {(f.site, f.pseudonym) for f in self.facts
                if (modality is None or f.modality == modality)
                and (body_part is None or f.body_part == body_part)
                and (psn is None or f.pseudonym == psn)
                and (allowed is None or f.site in allowed)}

    def shared_pseudonyms(self) -> list[str]:
        """Pseudonyms held by two or more sites (what cross-site linking is for)."""
        by: dict[str, set[int]] = {}
        for f in self.facts:
            by.setdefault(f.pseudonym, set()).add(f.site)
        return sorted(p for p, s in by.items() if len(s) > 1)

    def combos(self) -> list[tuple[str, str]]:
        return sorted({(f.modality, f.body_part) for f in self.facts})


def plan_layout(sites: int, seed: int, *, own: int = 2, shared: int | None = None,
                spread: int = 3) -> list[Placement]:
    """Which patient goes where: ``shared`` patients each at ``spread`` random sites,
    plus ``own`` patients only at each site. Deterministic in ``seed``."""
    if sites < 1 or own < 0 or spread < 1:
        raise ValueError("need at least one site, own >= 0 and spread >= 1")
    shared = max(1, sites // 2) if shared is None else shared
    rng = random.Random(seed)
    out: list[Placement] = []
    for p in range(1, shared + 1):
        for site in sorted(rng.sample(range(sites), min(spread, sites))):
            out.append(Placement(site, p, rng.choice(MODALITIES)))
    nxt = shared + 1
    for site in range(sites):
        for _ in range(own):
            out.append(Placement(site, nxt, rng.choice(MODALITIES)))
            nxt += 1
    return out


def spec_for(placement: Placement, seed: int, *, slices: int = 1, size: int = 16,
             phi: PhiOverrides | None = None) -> SynthSpec:
    return SynthSpec(patients=1, patient_offset=placement.patient - 1, studies=1, series=1,
                     slices=slices, rows=size, cols=size, modality=placement.modality,
                     seed=seed, site_seed=placement.site + 1, phi=phi)


def _fact(placement: Placement, sp: SeriesPlan, linkage_key: bytes) -> SeriesFact:
    return SeriesFact(placement.site, placement.patient,
                      pseudonym(sp.study.patient.patient_id, "", linkage_key),
                      placement.modality, sp.study.region, sp.study.study_uid, sp.series_uid)


def ground_truth(layout: Iterable[Placement], seed: int, linkage_key: bytes) -> GroundTruth:
    return GroundTruth([_fact(pl, sp, linkage_key)
                        for pl in layout for sp in plan(spec_for(pl, seed))])


async def plant(nodes: dict[int, Node], layout: Iterable[Placement], seed: int, *,
                slices: int = 1, size: int = 16, publish_delay_s: float = 0.0,
                phi: Callable[[Placement], PhiOverrides | None] = lambda pl: None) -> int:
    """Ingest every placement into its site's store (files + rows + publish job).
    ``nodes`` maps site index to a started Node; ``phi`` plants canaries per placement;
    returns instances stored."""
    stored = 0
    for pl in layout:
        node = nodes[pl.site]
        for ds in iter_datasets(spec_for(pl, seed, slices=slices, size=size, phi=phi(pl))):
            await ingest_dataset(node.store, node.files, ds, publish_delay_s=publish_delay_s)
            stored += 1
    return stored
