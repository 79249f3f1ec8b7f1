"""Volume export: NIfTI and NRRD geometry and voxel values against the DICOM attributes."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.sharing.volume import VolumeError, assemble, write_nifti, write_nrrd
from node.synth.generate import iter_datasets

SLICES = 8


def _series(oblique: bool) -> list[Dataset]:
    datasets = list(iter_datasets(patients=1, studies=1, series=1, slices=SLICES, rows=32, cols=32))
    if oblique:  # rotate the whole series 30 degrees about the anterior axis and tilt-free
        a = np.radians(30)
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        for ds in datasets:
            row = rot @ np.array([1.0, 0, 0])
            col = rot @ np.array([0, 1.0, 0])
            ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*row, *col)]
            pos = rot @ np.array([float(v) for v in ds.ImagePositionPatient])
            ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
            ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
    random.Random(4).shuffle(datasets)  # arrival order must not matter
    return datasets


def _expected(datasets: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """LPS affine and (i, j, k) voxels, derived here from the attributes directly."""
    o = [float(v) for v in datasets[0].ImageOrientationPatient]
    row, col = np.array(o[:3]), np.array(o[3:])
    normal = np.cross(row, col)
    ordered = sorted(datasets, key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    ipp = [np.array([float(v) for v in d.ImagePositionPatient]) for d in ordered]
    dr, dc = (float(v) for v in ordered[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = row * dc, col * dr
    affine[:3, 2] = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    affine[:3, 3] = ipp[0]
    voxels = np.stack([d.pixel_array.T * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
                       for d in ordered], axis=2)
    return affine, voxels


def _read_nrrd(path: Path) -> tuple[dict[str, str], np.ndarray]:
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    lines = head.decode("ascii").splitlines()
    assert lines[0] == "NRRD0004"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    data = gzip.decompress(body) if fields["encoding"] == "gzip" else body
    dtype = {"int16": "<i2", "float": "<f4"}[fields["type"]]
    sizes = tuple(int(s) for s in fields["sizes"].split())
    return fields, np.frombuffer(data, dtype=dtype).reshape(sizes, order="F")


def _vectors(text: str) -> np.ndarray:
    return np.array([[float(x) for x in v.strip("()").split(",")] for v in text.split()])


@pytest.mark.parametrize("oblique", [False, True])
def test_nifti_affine_is_ras_and_voxels_match(tmp_path: Path, oblique: bool) -> None:
    datasets = _series(oblique)
    affine_lps, voxels = _expected(datasets)
    path = write_nifti(assemble(datasets), tmp_path / "v.nii.gz")
    image = nib.load(str(path))
    ras = np.diag([-1, -1, 1, 1]) @ affine_lps
    assert np.allclose(image.affine, ras, atol=1e-4)
    assert np.allclose(image.get_qform(), ras, atol=1e-4)
    assert image.shape == (32, 32, SLICES)
    assert np.allclose(np.asarray(image.dataobj), voxels)
    # every slice's ImagePositionPatient (LPS -> RAS) is the corner voxel (0, 0, k) of one k
    corners = [(image.affine @ [0, 0, k, 1])[:3] for k in range(SLICES)]
    for ds in datasets:
        ras_corner = np.array([float(v) for v in ds.ImagePositionPatient]) * [-1, -1, 1]
        assert min(np.linalg.norm(c - ras_corner) for c in corners) < 1e-3


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_nrrd_header_and_data_round_trip(tmp_path: Path, encoding: str) -> None:
    datasets = _series(oblique=True)
    affine_lps, voxels = _expected(datasets)
    fields, data = _read_nrrd(write_nrrd(assemble(datasets), tmp_path / "v.nrrd", encoding=encoding))
    assert fields["space"] == "left-posterior-superior"
    assert fields["type"] == "float"  # slope 0.5 is not integral
    assert np.allclose(_vectors(fields["space directions"]), affine_lps[:3, :3].T, atol=1e-6)
    assert np.allclose(_vectors(fields["space origin"])[0], affine_lps[:3, 3], atol=1e-6)
    assert np.allclose(data, voxels)


def test_ct_hounsfield_stays_int16(tmp_path: Path) -> None:
    volume = assemble(_series(oblique=False))
    assert volume.data.dtype == np.int16
    assert volume.data.min() < 0  # intercept -1024 applied


def test_uneven_slices_are_refused(tmp_path: Path) -> None:
    datasets = _series(oblique=False)
    drop = sorted(datasets, key=lambda d: d.InstanceNumber)[3]
    datasets.remove(drop)
    with pytest.raises(VolumeError, match="evenly spaced"):
        assemble(datasets)
    assert not list(tmp_path.iterdir())


def test_missing_geometry_is_a_clear_error() -> None:
    datasets = _series(oblique=False)
    del datasets[2].ImagePositionPatient
    with pytest.raises(VolumeError, match="ImagePositionPatient"):
        assemble(datasets)
    with pytest.raises(VolumeError, match="no instances"):
        assemble([])
