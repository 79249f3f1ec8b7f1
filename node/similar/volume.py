"""A stored series as the voxels a method reads: ordered slices, rescaled, shrunk in-plane.

Methods need coarse grids and intensity histograms, not full resolution, so each slice
is block-averaged to at most ``MAX_SIDE`` pixels a side as it is read: memory stays at
one full slice plus the small volume, even for a 1,000-slice series. Runs in a worker
thread (pydicom reads files).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom

from node.sharing.build import SourceInstance, ordered_sources

from .method import VolumeInput, block_mean

MAX_SIDE = 128


class VolumeUnavailable(Exception):
    """The series' pixels cannot be read as one volume (the message says why)."""


def _slice(path: Path) -> tuple[np.ndarray, str]:
    with warnings.catch_warnings():  # pydicom warnings can quote values (PHI)
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for unusable pixel data
        raise VolumeUnavailable(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    if stored.ndim != 2:
        raise VolumeUnavailable("multi-frame or colour instances are not supported")
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise VolumeUnavailable("RescaleSlope/RescaleIntercept is not a number") from None
    plane = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    rows, cols = plane.shape
    if max(rows, cols) > MAX_SIDE:
        plane = block_mean(plane, (min(rows, MAX_SIDE), min(cols, MAX_SIDE)))
    return plane, str(ds.get("Modality", "") or "")


def read_volume(sources: Sequence[SourceInstance]) -> VolumeInput:
    """(slices, rows, cols) float32 voxels in slice order, and the series' modality."""
    if not sources:
        raise VolumeUnavailable("the series has no locally stored instances")
    planes: list[np.ndarray] = []
    modality = ""
    for source in ordered_sources(sources):
        plane, modality = _slice(source.path)
        if planes and plane.shape != planes[0].shape:
            raise VolumeUnavailable("instances differ in Rows/Columns")
        planes.append(plane)
    return VolumeInput(np.stack(planes), modality)
