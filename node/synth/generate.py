"""Synthetic DICOM patients, studies and series for tests, demos and the simulator.

Why it exists: every part of medfed (ingest, de-identification, bundles, privacy scans,
the federation simulator) needs realistic, reproducible images with known PHI in them.

Determinism and shared patients
-------------------------------
* A patient's identity (name, PatientID, birth date, sex) depends only on ``seed`` and
  the patient's global index ``i = patient_offset + 1 .. patient_offset + patients``.
* Everything a site creates — study/series/SOP UIDs, dates, accession numbers, lesions,
  pixel noise — depends on ``seed``, ``site_seed`` (defaults to ``seed``) and ``i``.

So "a known set of patients present at several sites" is: one ``seed`` for the whole
federation, a different ``site_seed`` per site, and overlapping index ranges, e.g.
site A ``patients=10, patient_offset=0, site_seed=1`` and site B ``patients=10,
patient_offset=5, site_seed=2`` share patients 6..10 (same PatientID/Name/BirthDate,
different StudyInstanceUIDs). Two sites with the same ``site_seed`` produce identical
studies for the shared patients: always give each site its own ``site_seed``.

Planted PHI: ``PhiOverrides`` replaces chosen values with canary strings so privacy tests
can scan disks, logs and DHT records for them. Deflated files compress the whole dataset,
so canaries are not visible in their raw bytes (RLE compresses pixels only).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from node.synth.phantom import ANATOMY, render_slice
from node.synth.plan import (
    ENCODERS,
    TRANSFER_SYNTAXES,
    PatientPhi,
    PhiOverrides,
    SeriesInfo,
    SeriesPlan,
    SynthError,
    SynthSpec,
    SynthSummary,
    plan,
    summarize,
)

__all__ = [
    "PRIVATE_CREATOR", "PRIVATE_GROUP", "TRANSFER_SYNTAXES", "PatientPhi", "PhiOverrides",
    "SeriesInfo", "SynthError", "SynthResult", "SynthSpec", "SynthSummary", "generate",
    "iter_datasets", "make_instance", "plan", "synth_command",
]

PRIVATE_GROUP, PRIVATE_CREATOR = 0x0009, "MEDFED SYNTH"
_FOV_MM = {"CHEST": 380.0, "ABDOMEN": 420.0, "HEAD": 240.0}
_TABLE_Z = {"CHEST": -320.0, "ABDOMEN": -520.0, "HEAD": 1210.0}


@dataclass(frozen=True)
class SynthResult:
    files: list[Path]
    summary: SynthSummary


# ---------------------------------------------------------------- datasets (pure)

def _ds(value: float) -> str:
    return f"{value:.6g}"


def _age(born: str, on: dt.date) -> str:
    b = dt.datetime.strptime(born, "%Y%m%d").date()
    return f"{max(0, on.year - b.year - ((on.month, on.day) < (b.month, b.day))):03d}Y"


def _charset(*texts: str) -> str:
    """Latin-1 as most sites use; UTF-8 only when a planted value needs it."""
    try:
        "".join(texts).encode("latin-1")
        return "ISO_IR 100"
    except UnicodeEncodeError:
        return "ISO_IR 192"


def _series_header(sp: SeriesPlan) -> Dataset:
    """Attributes shared by every instance of a series."""
    spec, st, pt, proto = sp.spec, sp.study, sp.study.patient, sp.protocol
    ds = Dataset()
    ds.SpecificCharacterSet = _charset(pt.name, pt.institution, st.description,
                                       st.image_comments, st.private_text)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage if spec.modality == "CT" else MRImageStorage
    ds.StudyDate = st.date.strftime("%Y%m%d")
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ds.StudyDate
    ds.StudyTime = st.start.strftime("%H%M%S")
    ds.SeriesTime = sp.start.strftime("%H%M%S")
    ds.AccessionNumber = st.accession
    ds.Modality = spec.modality
    ds.Manufacturer = "SYNTHETICA MEDICAL"
    ds.ManufacturerModelName = f"PHANTOM {spec.modality}"
    ds.InstitutionName = pt.institution
    ds.StationName = f"{spec.modality}{spec.site % 100:02d}"
    ds.ReferringPhysicianName = st.referring
    ds.StudyDescription = st.description
    ds.SeriesDescription = f"{proto.name} {proto.thickness:g}MM"
    ds.OperatorsName = sp.operator
    ds.PatientName = pt.name
    ds.PatientID = pt.patient_id
    ds.PatientBirthDate = pt.birth_date
    ds.PatientSex = pt.sex
    ds.PatientAge = _age(pt.birth_date, st.date)
    ds.BodyPartExamined = st.region
    ds.SliceThickness = _ds(proto.thickness)
    if spec.modality == "CT":
        ds.KVP = "120"
        ds.ConvolutionKernel = proto.kernel
    else:
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.RepetitionTime, ds.EchoTime = _ds(proto.tr_te[0]), _ds(proto.tr_te[1])
        ds.MagneticFieldStrength = "3"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = st.study_uid
    ds.SeriesInstanceUID = sp.series_uid
    ds.StudyID = f"{st.number}"
    ds.SeriesNumber = sp.number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = st.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageComments = st.image_comments
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.cols
    fov = _FOV_MM[st.region]
    ds.PixelSpacing = [_ds(fov / spec.rows), _ds(fov / spec.cols)]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if spec.modality == "CT":
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    else:
        ds.WindowCenter, ds.WindowWidth = "700", "1400"
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LT", st.private_text)
    return ds


def make_instance(sp: SeriesPlan, number: int) -> Dataset:
    """Instance ``number`` (1-based) of a series: a complete dataset with file meta,
    encoded (or compressed) for the request's transfer syntax. Deterministic."""
    spec, st = sp.spec, sp.study
    if not 1 <= number <= spec.slices:
        raise SynthError(f"instance number must be from 1 to {spec.slices}")
    ds = _series_header(sp)
    sop_uid = sp.sop_uid(number)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = number
    ds.ContentTime = (sp.start + dt.timedelta(seconds=number / 2)).strftime("%H%M%S.%f")[:13]
    ds.AcquisitionTime = ds.ContentTime
    fov, thick = _FOV_MM[st.region], sp.protocol.thickness
    z = _TABLE_Z[st.region] + (number - 1) * thick
    corner = [_ds(-fov / 2 + fov / n / 2) for n in (spec.cols, spec.rows)]
    ds.ImagePositionPatient = [*corner, _ds(z)]
    ds.SliceLocation = _ds(z)
    depth = (number - 1) / max(1, spec.slices - 1)
    pixels = render_slice(spec.rows, spec.cols, ANATOMY[st.region] + st.lesions, depth,
                          sp.protocol.contrast, sp.pixel_rng(number))
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if spec.transfer_syntax in ENCODERS:
        ds.compress(spec.transfer_syntax, pixels, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = spec.transfer_syntax
    return ds


def _spec(spec: SynthSpec | None, params: dict[str, Any]) -> SynthSpec:
    if spec is not None and params:
        raise SynthError("pass either a SynthSpec or keyword settings, not both")
    if spec is not None:
        return spec
    try:
        return SynthSpec(**params)
    except TypeError as exc:
        raise SynthError(f"unknown synthesis setting: {exc}") from None


def iter_datasets(spec: SynthSpec | None = None, **params: Any) -> Iterator[Dataset]:
    """Datasets in patient/study/series/instance order, without touching the disk.
    Keyword settings are those of SynthSpec (patients, studies, series, slices, modality,
    rows, cols, seed, site_seed, patient_offset, transfer_syntax, phi)."""
    spec = _spec(spec, params)
    for sp in plan(spec):
        for n in range(1, spec.slices + 1):
            yield make_instance(sp, n)


# ---------------------------------------------------------------- files (the edge)

def generate(out_dir: Path, spec: SynthSpec | None = None, **params: Any) -> SynthResult:
    """Write Part-10 files as out_dir/P001/ST01/SE01/IM0001.dcm (folder names carry no PHI).

    Refuses to overwrite existing files; each file appears whole (temp + rename); if
    writing fails part-way, the files written by this call are removed again.
    """
    spec = _spec(spec, params)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"output path {out_dir} exists and is not a folder")
    plans = plan(spec)
    targets = [(sp, n, out_dir / sp.folder / f"IM{n:04d}.dcm")
               for sp in plans for n in range(1, spec.slices + 1)]
    clash = next((p for _, _, p in targets if p.exists()), None)
    if clash is not None:
        raise SynthError(f"{clash} already exists; choose an empty output folder")
    written: list[Path] = []
    total = 0
    try:
        for sp, n, path in targets:
            total += _write(make_instance(sp, n), path)
            written.append(path)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise SynthError(
            f"could not write synthetic files under {out_dir}: {exc.strerror}") from exc
    return SynthResult(files=written, summary=summarize(plans, total))


def _write(ds: Dataset, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            size = fh.tell()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def synth_command(out: Path, patients: int = 3, studies: int = 1, series: int = 2,
                  slices: int = 64, modality: str = "CT", size: int = 256,
                  seed: int = 1) -> SynthResult:
    """What `medfed synth` runs."""
    return generate(Path(out), patients=patients, studies=studies, series=series,
                    slices=slices, modality=modality.upper(), rows=size, cols=size, seed=seed)
