"""Who and what to synthesise: patient identities, studies, series, UIDs and planted PHI.

Pure and deterministic (no pixels, no files): the same request always gives the same
plan, so any instance can be rendered on its own and tests can know in advance what
was planted. See node/synth/generate.py for how seeds make patients shared between sites.
"""

from __future__ import annotations

import datetime as dt
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from node.synth.names import FAMILY, FEMALE, INSTITUTIONS, MALE, STUDY_TITLES
from node.synth.phantom import Blob, Contrast, random_lesions

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
ENCODERS = {RLELossless: RLELosslessEncoder}
TRANSFER_SYNTAXES = UNCOMPRESSED + tuple(ENCODERS)
REGIONS = ("CHEST", "ABDOMEN", "HEAD")
_UUID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medfed:synth")
_EPOCH = dt.date(2019, 1, 1)



@dataclass(frozen=True)
class _Protocol:
    """One kind of series: what the scanner calls it and how it renders."""

    name: str
    contrast: Contrast
    thickness: float
    kernel: str = ""
    tr_te: tuple[float, float] = (0.0, 0.0)


_PROTOCOLS = {
    "CT": (
        _Protocol("AXIAL STANDARD", Contrast("CT", 12.0), 1.0, "STANDARD"),
        _Protocol("AXIAL SHARP", Contrast("CT", 24.0), 1.25, "BONE"),
        _Protocol("AXIAL THICK", Contrast("CT", 6.0), 5.0, "STANDARD"),
    ),
    "MR": (
        _Protocol("AX T1 SE", Contrast("T1", 18.0), 5.0, tr_te=(500.0, 15.0)),
        _Protocol("AX T2 TSE", Contrast("T2", 18.0), 4.0, tr_te=(4000.0, 100.0)),
        _Protocol("AX T1 POST", Contrast("T1", 22.0), 3.0, tr_te=(550.0, 12.0)),
    ),
}


class SynthError(ValueError):
    """The synthetic data request cannot be met; the message says which setting to change."""


PatientCanary = str | Callable[[int], str]
StudyCanary = str | Callable[[int, int], str]


@dataclass(frozen=True)
class PhiOverrides:
    """Canary values to plant. A string is a format with ``{i}`` (patient index, 1-based,
    global) and, for study-level fields, ``{s}`` (study number within the patient); a
    callable gets ``(i)`` or ``(i, s)``. ``None`` keeps the realistic default."""

    patient_name: PatientCanary | None = None
    patient_id: PatientCanary | None = None
    birth_date: PatientCanary | None = None
    institution: PatientCanary | None = None
    accession: StudyCanary | None = None
    study_description: StudyCanary | None = None
    image_comments: StudyCanary | None = None
    private_text: StudyCanary | None = None

    def __post_init__(self) -> None:
        for name in ("patient_name", "patient_id", "birth_date", "institution"):
            _check_format(name, getattr(self, name), {"i"})
        for name in ("accession", "study_description", "image_comments", "private_text"):
            _check_format(name, getattr(self, name), {"i", "s"})


def _check_format(name: str, canary: object, allowed: set[str]) -> None:
    if canary is None or callable(canary):
        return
    if not isinstance(canary, str):
        raise SynthError(f"PhiOverrides.{name} must be a format string or a callable")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(canary) if f is not None}
    except ValueError as exc:
        raise SynthError(f"PhiOverrides.{name} is not a valid format string: {exc}") from None
    if not fields <= allowed:
        raise SynthError(f"PhiOverrides.{name} may only use the placeholders {sorted(allowed)}")


# (max length, allows CR/LF) per VR of the planted attributes
_VR_LIMITS = {"PN": (64, False), "LO": (64, False), "SH": (16, False), "LT": (10240, True)}


def _render(name: str, vr: str, canary: Any, default: str, *args: int) -> str:
    """The value to plant: the canary (checked against its VR) or the default."""
    if canary is None:
        return default
    try:
        value = canary(*args) if callable(canary) else canary.format(**dict(zip("is", args)))
    except (ValueError, IndexError, KeyError) as exc:
        raise SynthError(
            f"PhiOverrides.{name} could not be rendered: {type(exc).__name__}") from None
    limit, multiline = _VR_LIMITS[vr]
    if not isinstance(value, str) or not value.strip():
        raise SynthError(f"PhiOverrides.{name} must give a non-empty string")
    if len(value) > limit:
        raise SynthError(f"PhiOverrides.{name} gives {len(value)} characters; {vr} allows {limit}")
    bad = "\\" if multiline else "\\\r\n"
    if any(c in bad or (ord(c) < 32 and c not in "\r\n") for c in value):
        raise SynthError(f"PhiOverrides.{name} contains a backslash or control character")
    return value


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; checked on construction so bad requests fail before any output."""

    patients: int = 3
    studies: int = 1
    series: int = 2
    slices: int = 64
    modality: str = "CT"
    rows: int = 256
    cols: int = 256
    seed: int = 1
    site_seed: int | None = None
    patient_offset: int = 0
    transfer_syntax: str = ExplicitVRLittleEndian
    phi: PhiOverrides | None = None

    def __post_init__(self) -> None:
        limits = {"patients": 99999, "studies": 99, "series": 99, "slices": 9999,
                  "rows": 4096, "cols": 4096}
        for name, top in limits.items():
            value = getattr(self, name)
            low = 16 if name in ("rows", "cols") else 1
            if not isinstance(value, int) or not low <= value <= top:
                raise SynthError(f"{name} must be an integer from {low} to {top}")
        for name in ("seed", "site_seed", "patient_offset"):
            value = getattr(self, name)
            if name == "site_seed" and value is None:
                continue
            if not isinstance(value, int) or value < 0:
                raise SynthError(f"{name} must be a non-negative integer")
        if self.phi is not None and not isinstance(self.phi, PhiOverrides):
            raise SynthError("phi must be a PhiOverrides")
        if self.modality not in _PROTOCOLS:
            raise SynthError(f"modality must be one of {sorted(_PROTOCOLS)}")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            names = ", ".join(UID(u).name for u in TRANSFER_SYNTAXES)
            raise SynthError(f"transfer syntax not supported for synthesis; use one of: {names}")
        encoder = ENCODERS.get(UID(self.transfer_syntax))
        if encoder is not None and not encoder.is_available:
            raise SynthError(f"no encoder installed for {UID(self.transfer_syntax).name}")

    @property
    def site(self) -> int:
        return self.seed if self.site_seed is None else self.site_seed

    @property
    def overrides(self) -> PhiOverrides:
        return self.phi or PhiOverrides()


@dataclass(frozen=True)
class PatientPlan:
    index: int
    name: str
    patient_id: str
    birth_date: str
    sex: str
    institution: str


@dataclass(frozen=True)
class StudyPlan:
    patient: PatientPlan
    number: int
    study_uid: str
    frame_uid: str
    date: dt.date
    start: dt.datetime
    accession: str
    region: str
    description: str
    referring: str
    image_comments: str
    private_text: str
    lesions: tuple[Blob, ...]


@dataclass(frozen=True)
class SeriesPlan:
    """Everything needed to render any instance of one series, in any order."""

    spec: SynthSpec
    study: StudyPlan
    number: int
    series_uid: str
    protocol: _Protocol
    operator: str

    @property
    def folder(self) -> Path:
        return Path(f"P{self.study.patient.index:03d}", f"ST{self.study.number:02d}",
                    f"SE{self.number:02d}")

    @property
    def start(self) -> dt.datetime:
        return self.study.start + dt.timedelta(minutes=self.number)

    def _key(self, number: int) -> tuple[int, ...]:
        spec, st = self.spec, self.study
        return (spec.seed, spec.site, st.patient.index, st.number, self.number, number)

    def sop_uid(self, number: int) -> str:
        return _uid("sop", *self._key(number))

    def pixel_rng(self, number: int) -> np.random.Generator:
        """Noise of one instance, independent of the order instances are made in."""
        return _rng(6, *self._key(number))


@dataclass(frozen=True)
class PatientPhi:
    """PHI planted for one patient. Defaults are realistic, not unique: scan for these
    values only when they were planted as canaries through PhiOverrides."""

    index: int
    name: str
    patient_id: str
    birth_date: str
    institution: str
    accession_numbers: tuple[str, ...]
    free_text: tuple[str, ...]

    def values(self) -> tuple[str, ...]:
        return (self.name, self.patient_id, self.birth_date, self.institution,
                *self.accession_numbers, *self.free_text)


@dataclass(frozen=True)
class SeriesInfo:
    patient_index: int
    study_uid: str
    series_uid: str
    modality: str
    body_part: str
    instances: int
    folder: Path


@dataclass(frozen=True)
class SynthSummary:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int
    phi: tuple[PatientPhi, ...]
    series_list: tuple[SeriesInfo, ...]


# ---------------------------------------------------------------- planning (pure)

def _uid(*parts: object) -> str:
    """A valid, deterministic 2.25 UID (from a name-based UUID)."""
    return f"2.25.{uuid.uuid5(_UUID_NS, '/'.join(map(str, parts))).int}"


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(list(parts))


def _person(rng: np.random.Generator) -> str:
    return f"{rng.choice(FAMILY)}^{rng.choice(FEMALE + MALE)}"


def plan_patient(spec: SynthSpec, i: int) -> PatientPlan:
    """Identity depends on (seed, i) only, so the same patient appears at every site."""
    rng = _rng(1, spec.seed, i)
    sex = str(rng.choice(["F", "M", "O"], p=[0.49, 0.49, 0.02]))
    given = rng.choice(FEMALE if sex == "F" else MALE)
    middle = f"^{chr(65 + int(rng.integers(26)))}" if rng.random() < 0.4 else ""
    born = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 70 * 365)))
    mrn = (i * 7919 + int(_rng(2, spec.seed).integers(10**7))) % 10**7  # unique per seed
    site_inst = INSTITUTIONS[int(_rng(3, spec.site).integers(len(INSTITUTIONS)))]
    o = spec.overrides
    birth = _render("birth_date", "LO", o.birth_date, born.strftime("%Y%m%d"), i)
    try:
        dt.datetime.strptime(birth, "%Y%m%d")
    except ValueError:
        raise SynthError("PhiOverrides.birth_date must give a date as YYYYMMDD") from None
    return PatientPlan(
        index=i,
        name=_render("patient_name", "PN", o.patient_name,
                     f"{rng.choice(FAMILY)}^{given}{middle}", i),
        patient_id=_render("patient_id", "LO", o.patient_id, f"MRN{mrn:07d}", i),
        birth_date=birth,
        sex=sex,
        institution=_render("institution", "LO", o.institution, str(site_inst), i),
    )


def plan_studies(spec: SynthSpec, patient: PatientPlan) -> list[StudyPlan]:
    i, site, o = patient.index, spec.site, spec.overrides
    rng = _rng(4, spec.seed, site, i)
    days = np.sort(rng.choice(5 * 365, size=spec.studies, replace=False))
    studies = []
    for s in range(1, spec.studies + 1):
        date = _EPOCH + dt.timedelta(days=int(days[s - 1]))
        region = REGIONS[(i + s + site) % len(REGIONS)]
        start = dt.datetime.combine(date, dt.time(int(rng.integers(7, 17)), int(rng.integers(60)),
                                                  int(rng.integers(60))))
        digits = uuid.uuid5(_UUID_NS, f"acc/{spec.seed}/{site}/{i}/{s}").int % 10**12
        accession = _render("accession", "SH", o.accession, f"ACC{digits:012d}", i, s)
        title = STUDY_TITLES[(spec.modality, region)]
        studies.append(StudyPlan(
            patient=patient, number=s,
            study_uid=_uid("study", spec.seed, site, i, s),
            frame_uid=_uid("frame", spec.seed, site, i, s),
            date=date, start=start, accession=accession, region=region,
            description=_render("study_description", "LO", o.study_description, title, i, s),
            referring=_person(rng),
            image_comments=_render("image_comments", "LT", o.image_comments,
                                   "SYNTHETIC PHANTOM - NOT FOR DIAGNOSTIC USE", i, s),
            private_text=_render(
                "private_text", "LT", o.private_text,
                f"RECON FOR {patient.name} ({patient.patient_id}) ACC {accession}", i, s),
            lesions=random_lesions(rng, region),
        ))
    return studies


def plan(spec: SynthSpec) -> list[SeriesPlan]:
    """All series of the request, in patient/study/series order. Metadata only, no pixels."""
    protocols = _PROTOCOLS[spec.modality]
    out = []
    for i in range(spec.patient_offset + 1, spec.patient_offset + spec.patients + 1):
        for study in plan_studies(spec, plan_patient(spec, i)):
            rng = _rng(5, spec.seed, spec.site, i, study.number)
            for k in range(1, spec.series + 1):
                out.append(SeriesPlan(
                    spec=spec, study=study, number=k,
                    series_uid=_uid("series", spec.seed, spec.site, i, study.number, k),
                    protocol=protocols[(k - 1) % len(protocols)],
                    operator=_person(rng),
                ))
    return out


def summarize(plans: list[SeriesPlan], total_bytes: int = 0) -> SynthSummary:
    """Counts and planted PHI of a plan (what tests scan for)."""
    studies = {sp.study.study_uid: sp.study for sp in plans}
    patients: dict[int, list[StudyPlan]] = {}
    for st in studies.values():
        patients.setdefault(st.patient.index, []).append(st)
    phi = tuple(
        PatientPhi(
            index=i, name=sts[0].patient.name, patient_id=sts[0].patient.patient_id,
            birth_date=sts[0].patient.birth_date, institution=sts[0].patient.institution,
            accession_numbers=tuple(st.accession for st in sts),
            free_text=tuple(t for st in sts
                            for t in (st.description, st.image_comments, st.private_text)),
        )
        for i, sts in patients.items()
    )
    series_list = tuple(
        SeriesInfo(sp.study.patient.index, sp.study.study_uid, sp.series_uid, sp.spec.modality,
                   sp.study.region, sp.spec.slices, sp.folder)
        for sp in plans
    )
    return SynthSummary(
        patients=len(patients), studies=len(studies), series=len(plans),
        instances=sum(s.instances for s in series_list), bytes=total_bytes,
        phi=phi, series_list=series_list,
    )


