"""One 3-D volume from the instances of a series, written as NIfTI-1 or NRRD.

Geometry comes from the DICOM attributes only: ImageOrientationPatient gives the row
direction r (along increasing column index i) and the column direction c (along
increasing row index j); PixelSpacing is [row spacing Δj, column spacing Δi]; the slice
step is the measured difference of consecutive ImagePositionPatient values (so a
gantry tilt is kept, and irregular gaps are refused rather than silently stretched).
In DICOM's patient space (LPS) voxel (i, j, k) sits at

    S0 + i·Δi·r + j·Δj·c + k·step

NRRD can say ``space: left-posterior-superior`` and takes that matrix as is. NIfTI's
world space is RAS, so its affine is diag(-1, -1, 1, 1) · LPS affine — forgetting this
flip is the classic error that mirrors a volume left/right.

Voxel values are stored values × RescaleSlope + RescaleIntercept (HU for CT), kept as
int16 when that is exact and fits, float32 otherwise.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset

SPACING_TOLERANCE = 1e-3   # relative; irregular slice gaps beyond this are refused
ORIENTATION_TOLERANCE = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(Exception):
    """The series cannot be one regular 3-D volume; the message says which attribute."""


@dataclass(frozen=True)
class Volume:
    """data[i, j, k] (column, row, slice) and the voxel → LPS millimetre affine."""

    data: np.ndarray
    affine_lps: np.ndarray

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise VolumeError(f"an instance lacks a usable {keyword}; it cannot be placed in a volume") from None
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise VolumeError(f"{keyword} must have {count} finite numbers")
    return out


def _rescale(ds: Dataset) -> tuple[float, float]:
    try:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise VolumeError("RescaleSlope/RescaleIntercept is not a number") from None


def _check_same(values: Sequence[np.ndarray], what: str, tol: float) -> np.ndarray:
    first = values[0]
    if any(not np.allclose(v, first, atol=tol, rtol=0) for v in values[1:]):
        raise VolumeError(f"instances differ in {what}; a volume needs one {what} for all slices")
    return first


def _slice_step(positions: np.ndarray, normal: np.ndarray, thickness: float) -> np.ndarray:
    if len(positions) == 1:
        return normal * (thickness or 1.0)
    steps = np.diff(positions, axis=0)
    mean = steps.mean(axis=0)
    size = float(np.linalg.norm(mean))
    if size == 0 or np.any(np.linalg.norm(steps - mean, axis=1) > SPACING_TOLERANCE * max(size, 1.0)):
        raise VolumeError("slices are not evenly spaced (gap, duplicate or mixed positions); "
                          "export them as DICOM instead")
    return mean


def _voxels(datasets: Sequence[Dataset]) -> np.ndarray:
    """(k, j, i) array with the modality rescale applied."""
    planes: list[np.ndarray] = []
    exact = True
    for ds in datasets:
        try:
            stored = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for unusable pixel data
            raise VolumeError(f"pixel data cannot be decoded ({type(exc).__name__})") from None
        if stored.ndim != 2:
            raise VolumeError("multi-frame or colour instances are not supported for volume export")
        slope, intercept = _rescale(ds)
        exact = exact and slope.is_integer() and intercept.is_integer()
        planes.append(stored.astype(np.float64) * slope + intercept)
    stack = np.stack(planes)
    if exact and stack.min() >= np.iinfo(np.int16).min and stack.max() <= np.iinfo(np.int16).max:
        return stack.astype(np.int16)
    return stack.astype(np.float32)


def assemble(datasets: Sequence[Dataset]) -> Volume:
    """Sort the slices along their normal and build the volume and its LPS affine."""
    if not datasets:
        raise VolumeError("the series has no instances")
    orientation = _check_same([_floats(ds, "ImageOrientationPatient", 6) for ds in datasets],
                              "ImageOrientationPatient", ORIENTATION_TOLERANCE)
    spacing = _check_same([_floats(ds, "PixelSpacing", 2) for ds in datasets], "PixelSpacing", 1e-6)
    if len({(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in datasets}) != 1:
        raise VolumeError("instances differ in Rows/Columns")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise VolumeError("ImageOrientationPatient is not two orthogonal unit vectors")
    positions = np.array([_floats(ds, "ImagePositionPatient", 3) for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    ordered = [datasets[i] for i in order]
    thickness = float(ordered[0].get("SliceThickness", 0) or 0)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = _slice_step(positions, normal, thickness)
    affine[:3, 3] = positions[0]
    data = _voxels(ordered).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    return Volume(data, affine)


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".vol-", suffix=".part" + "".join(path.suffixes))
    os.close(fd)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_nifti(volume: Volume, path: Path) -> Path:
    """NIfTI-1 (``.nii`` or ``.nii.gz``) with sform and qform set to the RAS affine."""
    import nibabel as nib

    image = nib.Nifti1Image(volume.data, volume.affine_ras)
    image.set_sform(volume.affine_ras, code="scanner")
    image.set_qform(volume.affine_ras, code="scanner")
    image.header.set_xyzt_units("mm")
    return _atomic(path, lambda temp: nib.save(image, str(temp)))


_NRRD_TYPES = {np.dtype(np.int16): "int16", np.dtype(np.float32): "float"}


def _vector(v: np.ndarray) -> str:
    return "(" + ",".join(repr(float(x)) for x in v) + ")"


def nrrd_header(volume: Volume, *, encoding: str = "gzip") -> bytes:
    """The text header of an NRRD file with attached data."""
    if encoding not in ("raw", "gzip"):
        raise VolumeError("NRRD encoding must be 'raw' or 'gzip'")
    dtype = _NRRD_TYPES.get(volume.data.dtype)
    if dtype is None:
        raise VolumeError(f"no NRRD type for voxel type {volume.data.dtype}")
    directions = " ".join(_vector(volume.affine_lps[:3, a]) for a in range(3))
    lines = [
        "NRRD0004",
        f"type: {dtype}",
        "dimension: 3",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(s) for s in volume.data.shape),
        f"space directions: {directions}",
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {encoding}",
        f"space origin: {_vector(volume.affine_lps[:3, 3])}",
    ]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def write_nrrd(volume: Volume, path: Path, *, encoding: str = "gzip") -> Path:
    """NRRD with attached data; the first axis (i) varies fastest, little-endian."""
    header = nrrd_header(volume, encoding=encoding)
    raw = volume.data.astype(volume.data.dtype.newbyteorder("<")).tobytes(order="F")
    body = gzip.compress(raw, compresslevel=6) if encoding == "gzip" else raw

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            handle.write(header)
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())

    return _atomic(path, write)
