"""Synthetic DICOM generator: files, identities, determinism, planted PHI, realism."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zstandard
from pydicom.uid import UID, JPEGBaseline8Bit

from node.synth.generate import (
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    TRANSFER_SYNTAXES,
    PhiOverrides,
    SynthError,
    SynthSpec,
    generate,
    iter_datasets,
    make_instance,
    plan,
    synth_command,
)

SMALL = dict(rows=64, cols=64, slices=4)
LAYOUT = re.compile(r"^P\d{3}/ST\d{2}/SE\d{2}/IM\d{4}\.dcm$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth")
    result = generate(out, patients=2, studies=2, series=2, **SMALL)
    datasets = [pydicom.dcmread(f) for f in result.files]
    return out, result, datasets


def _by(datasets, key: str) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for ds in datasets:
        groups[getattr(ds, key)].append(ds)
    return groups


def test_files_are_part10_in_a_phi_free_layout(tree) -> None:
    out, result, datasets = tree
    s = result.summary
    assert (s.patients, s.studies, s.series, s.instances) == (2, 4, 8, 32)
    assert len(result.files) == 32 == len(set(result.files))
    assert sorted(out.rglob("*.dcm")) == sorted(result.files)
    assert not list(out.rglob(".tmp-*"))
    assert s.bytes == sum(f.stat().st_size for f in result.files)
    for f, ds in zip(result.files, datasets):
        rel = f.relative_to(out).as_posix()
        assert LAYOUT.match(rel), rel
        assert f.read_bytes()[128:132] == b"DICM"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.PatientID not in rel and str(ds.PatientName) not in rel
    assert {i.folder.as_posix() for i in s.series_list} == {
        f.parent.relative_to(out).as_posix() for f in result.files}


def test_uids_are_valid_and_unique(tree) -> None:
    _, _, datasets = tree
    for ds in datasets:
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                    ds.FrameOfReferenceUID):
            assert UID(uid).is_valid, uid
    assert len({ds.SOPInstanceUID for ds in datasets}) == 32
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 8
    assert len({ds.StudyInstanceUID for ds in datasets}) == 4
    every = [ds.SOPInstanceUID for ds in datasets] + [ds.SeriesInstanceUID for ds in datasets]
    assert not {ds.StudyInstanceUID for ds in datasets} & set(every)


def test_patient_study_series_attributes_are_consistent(tree) -> None:
    _, result, datasets = tree
    per_level = {
        "PatientID": ("PatientName", "PatientBirthDate", "PatientSex", "InstitutionName"),
        "StudyInstanceUID": ("PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                             "StudyDescription", "BodyPartExamined", "ReferringPhysicianName",
                             "FrameOfReferenceUID", "PatientAge"),
        "SeriesInstanceUID": ("StudyInstanceUID", "SeriesNumber", "SeriesDescription",
                              "SliceThickness", "OperatorsName", "Modality", "Rows", "Columns"),
    }
    for key, attrs in per_level.items():
        for group in _by(datasets, key).values():
            for attr in attrs:
                assert len({str(getattr(ds, attr)) for ds in group}) == 1, (key, attr)
    for pid, group in _by(datasets, "PatientID").items():
        studies = {ds.StudyInstanceUID: ds for ds in group}.values()
        assert len({ds.StudyDate for ds in studies}) == 2
        assert len({ds.AccessionNumber for ds in studies}) == 2
        assert re.fullmatch(r"MRN\d{7}", pid)
        assert re.fullmatch(r"[A-Z]+\^[A-Z]+(\^[A-Z])?", str(group[0].PatientName))
        born = dt.datetime.strptime(group[0].PatientBirthDate, "%Y%m%d").date()
        for ds in group:
            on = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
            assert int(ds.PatientAge[:3]) in ((on - born).days // 366, (on - born).days // 365)
    assert len({ds.PatientID for ds in datasets}) == 2
    assert {p.patient_id for p in result.summary.phi} == {ds.PatientID for ds in datasets}


def test_slice_geometry_steps_by_thickness(tree) -> None:
    _, _, datasets = tree
    for group in _by(datasets, "SeriesInstanceUID").values():
        group.sort(key=lambda ds: ds.InstanceNumber)
        assert [ds.InstanceNumber for ds in group] == [1, 2, 3, 4]
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in group])
        assert np.allclose(np.diff(z), float(group[0].SliceThickness))
        assert np.allclose(z, [float(ds.SliceLocation) for ds in group])
        assert len({tuple(ds.ImagePositionPatient[:2]) for ds in group}) == 1
        assert [float(v) for v in group[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(group[0].PixelSpacing[0]) > 0


def test_pixels_are_12_bit_and_sized(tree) -> None:
    _, _, datasets = tree
    for ds in datasets:
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2 == 64 * 64 * 2
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert int(ds.pixel_array.max()) < 4096
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)


def test_private_block_carries_phi_to_remove(tree) -> None:
    _, _, datasets = tree
    ds = datasets[0]
    text = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x10].value
    assert ds.PatientID in text and str(ds.PatientName) in text
    assert ds.AccessionNumber in text


def _fingerprint(**params) -> list[tuple[str, str, bytes]]:
    return [(ds.StudyInstanceUID, ds.SOPInstanceUID, ds.PixelData)
            for ds in iter_datasets(patients=1, series=2, **SMALL, **params)]


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, again, other = _fingerprint(seed=5), _fingerprint(seed=5), _fingerprint(seed=6)
    assert first == again
    for a, b in zip(first, other):
        assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2]


def test_instances_do_not_depend_on_generation_order() -> None:
    sp = plan(SynthSpec(patients=1, series=1, **SMALL))[0]
    alone = make_instance(sp, 3)
    in_order = list(iter_datasets(patients=1, series=1, **SMALL))[2]
    assert alone.SOPInstanceUID == in_order.SOPInstanceUID
    assert alone.PixelData == in_order.PixelData
    with pytest.raises(SynthError):
        make_instance(sp, 5)


def test_canaries_are_planted_per_patient(tmp_path: Path) -> None:
    phi = PhiOverrides(
        patient_name="CANARY^NAME{i}",
        patient_id=lambda i: f"CANARYID{i:04d}",
        birth_date="19{i:02d}0101",
        institution="CANARY HOSPITAL {i}",
        accession="CAN{i}S{s}",
        study_description="CANARY STUDY {i}-{s}",
        image_comments=lambda i, s: f"CANARY COMMENT {i}/{s}",
        private_text="CANARY PRIVATE {i} {s}",
    )
    result = generate(tmp_path, patients=2, studies=2, series=1, phi=phi, **SMALL)
    phis = {p.index: p for p in result.summary.phi}
    assert phis[2].name == "CANARY^NAME2" and phis[2].patient_id == "CANARYID0002"
    assert phis[2].birth_date == "19020101"
    assert phis[2].accession_numbers == ("CAN2S1", "CAN2S2")
    assert "CANARY PRIVATE 2 2" in phis[2].free_text
    for f in result.files:
        ds = pydicom.dcmread(f)
        i = int(ds.PatientID[-4:])
        raw = f.read_bytes()
        for value in (f"CANARY^NAME{i}", f"CANARYID{i:04d}", f"19{i:02d}0101",
                      f"CANARY HOSPITAL {i}", ds.AccessionNumber, ds.StudyDescription,
                      ds.ImageComments, f"CANARY PRIVATE {i}"):
            assert value.encode() in raw
        assert ds.AccessionNumber in phis[i].accession_numbers
        assert set(phis[i].values()) >= {ds.AccessionNumber, ds.ImageComments}


def test_non_latin1_canary_switches_to_utf8() -> None:
    phi = PhiOverrides(patient_name="ŁUKASZ^ŻÓŁW{i}")
    ds = next(iter_datasets(patients=1, series=1, phi=phi, **SMALL))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encode(ds)))
    assert str(back.PatientName) == "ŁUKASZ^ŻÓŁW1"


def _encode(ds: pydicom.Dataset) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("phi, wrong", [
    (dict(accession="ACCESSION-TOO-LONG-{i}"), "SH allows 16"),
    (dict(patient_name="X{s}"), "placeholders"),
    (dict(birth_date="1990-01-01"), "YYYYMMDD"),
    (dict(institution="A\\B{i}"), "backslash"),
    (dict(study_description=lambda i, s: ""), "non-empty"),
    (dict(private_text="{i:q}"), "could not be rendered"),
])
def test_bad_canaries_are_refused_before_output(tmp_path: Path, phi, wrong) -> None:
    with pytest.raises(SynthError, match=wrong):
        generate(tmp_path / "out", patients=1, phi=PhiOverrides(**phi), **SMALL)
    assert not (tmp_path / "out").exists()


def test_shared_patients_across_sites() -> None:
    def site(offset: int, site_seed: int) -> dict[int, tuple]:
        spec = SynthSpec(patients=3, patient_offset=offset, seed=7, site_seed=site_seed, series=1)
        sps = plan(spec)
        return {sp.study.patient.index: (sp.study.patient, sp.study.study_uid, sp.series_uid)
                for sp in sps}

    a, b = site(0, 1), site(2, 2)
    assert sorted(a) == [1, 2, 3] and sorted(b) == [3, 4, 5]
    pa, study_a, series_a = a[3]
    pb, study_b, series_b = b[3]
    assert (pa.patient_id, pa.name, pa.birth_date, pa.sex) == (pb.patient_id, pb.name,
                                                              pb.birth_date, pb.sex)
    assert study_a != study_b and series_a != series_b
    assert len({a[1][0].patient_id, a[2][0].patient_id, pa.patient_id,
                b[4][0].patient_id, b[5][0].patient_id}) == 5
    # the datasets carry the same identity too
    ds_a = next(iter_datasets(patients=1, patient_offset=2, seed=7, site_seed=1, **SMALL))
    ds_b = next(iter_datasets(patients=1, patient_offset=2, seed=7, site_seed=2, **SMALL))
    assert ds_a.PatientID == ds_b.PatientID == pa.patient_id
    assert ds_a.PatientBirthDate == ds_b.PatientBirthDate
    assert ds_a.StudyInstanceUID != ds_b.StudyInstanceUID and ds_a.PixelData != ds_b.PixelData


def test_patient_ids_unique_across_many_patients() -> None:
    ids = {sp.study.patient.patient_id for sp in plan(SynthSpec(patients=400, series=1))}
    assert len(ids) == 400


@pytest.mark.parametrize("ts", TRANSFER_SYNTAXES, ids=lambda u: UID(u).keyword)
def test_each_transfer_syntax_round_trips(tmp_path: Path, ts: str) -> None:
    reference = list(iter_datasets(patients=1, series=1, **SMALL))
    result = generate(tmp_path, patients=1, series=1, transfer_syntax=ts, **SMALL)
    for f, ref in zip(result.files, reference):
        ds = pydicom.dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == ts
        assert ds.SOPInstanceUID == ref.SOPInstanceUID
        assert ds.PatientName == ref.PatientName
        assert np.array_equal(ds.pixel_array, ref.pixel_array)


def test_ct_pixels_look_like_ct() -> None:
    datasets = list(iter_datasets(patients=3, series=1, slices=16, rows=256, cols=256))
    raw = b"".join(ds.PixelData for ds in datasets)
    ratio = len(raw) / len(zstandard.ZstdCompressor(level=3).compress(raw))
    assert 1.5 < ratio < 4.0, ratio
    for ds in datasets:
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert hu.std() > 100
        assert -1040 < hu[:8, :8].mean() < -960  # air in the corner
        if ds.InstanceNumber == 8:
            assert -100 < hu[120:136, 120:136].mean() < 200  # soft tissue in the middle
    assert {ds.BodyPartExamined for ds in datasets} == {"CHEST", "ABDOMEN", "HEAD"}
    first, middle = datasets[0].pixel_array, datasets[7].pixel_array
    assert np.abs(first.astype(int) - middle).mean() > 20  # anatomy changes along z


def test_mr_is_mr() -> None:
    datasets = list(iter_datasets(modality="MR", patients=1, series=2, slices=8,
                                  rows=128, cols=128))
    raw = b"".join(ds.PixelData for ds in datasets)
    ratio = len(raw) / len(zstandard.ZstdCompressor(level=3).compress(raw))
    assert 1.5 < ratio < 4.0, ratio
    assert {ds.SOPClassUID for ds in datasets} == {pydicom.uid.MRImageStorage}
    assert "RescaleIntercept" not in datasets[0]
    assert len({ds.SeriesDescription for ds in datasets}) == 2
    assert all(ds.pixel_array.std() > 50 for ds in datasets)


def test_full_size_series_is_fast() -> None:
    start = time.perf_counter()
    n = sum(1 for _ in iter_datasets(patients=1, series=1, slices=64, rows=512, cols=512))
    assert n == 64
    assert time.perf_counter() - start < 8.0  # ~0.5 s when the machine is idle


@pytest.mark.parametrize("params, wrong", [
    (dict(patients=0), "patients"),
    (dict(rows=8), "rows"),
    (dict(seed=-1), "seed"),
    (dict(modality="PET"), "modality"),
    (dict(transfer_syntax=JPEGBaseline8Bit), "transfer syntax"),
    (dict(patiens=3), "unknown"),
])
def test_bad_settings_are_refused(tmp_path: Path, params, wrong) -> None:
    with pytest.raises(SynthError, match=wrong):
        generate(tmp_path / "out", **params)
    with pytest.raises(SynthError, match=wrong):
        next(iter_datasets(**params))
    assert not (tmp_path / "out").exists()


def test_never_overwrites_and_cleans_up_after_failure(tmp_path: Path) -> None:
    first = generate(tmp_path, patients=1, series=1, **SMALL)
    before = {f: f.read_bytes() for f in first.files}
    with pytest.raises(SynthError, match="already exists"):
        generate(tmp_path, patients=1, series=1, seed=2, **SMALL)
    assert {f: f.read_bytes() for f in first.files} == before

    blocked = tmp_path / "second"
    (blocked / "P001" / "ST01").mkdir(parents=True)
    (blocked / "P001" / "ST01" / "SE02").write_text("not a folder")
    with pytest.raises(SynthError, match="could not write"):
        generate(blocked, patients=1, series=2, **SMALL)
    assert not list(blocked.rglob("*.dcm")) and not list(blocked.rglob(".tmp-*"))

    with pytest.raises(SynthError, match="not a folder"):
        generate(blocked / "P001" / "ST01" / "SE02", patients=1, **SMALL)


def test_synth_command(tmp_path: Path) -> None:
    result = synth_command(tmp_path, patients=1, studies=1, series=1, slices=3,
                           modality="mr", size=32, seed=3)
    ds = pydicom.dcmread(result.files[0])
    assert (ds.Modality, ds.Rows, ds.Columns, result.summary.instances) == ("MR", 32, 32, 3)
