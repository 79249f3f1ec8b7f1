"""A near-duplicate of a series: the same images with a little noise, as another patient's.

What a similarity search must find first (tests, the simulator's ``similarity``
scenario, the benchmark): the pixels of a case with small Gaussian noise, under new
UIDs and a new identity, as if the same findings had been imaged at another hospital.
Pure: datasets in, datasets out.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid


def near_duplicate(datasets: Iterable[Dataset], rng: np.random.Generator, *, sigma: float = 2.0,
                   patient_id: str = "DUP0001", patient_name: str = "Duplicate^Case"
                   ) -> Iterator[Dataset]:
    """Copies of ``datasets`` (uncompressed, one frame each) with noise of ``sigma``
    stored units, new Study/Series/SOP Instance UIDs and the given patient identity."""
    study_uid, series_uid = generate_uid(), generate_uid()
    for source in datasets:
        ds = copy.deepcopy(source)
        pixels = ds.pixel_array.astype(np.float64)
        info = np.iinfo(ds.pixel_array.dtype)
        noisy = np.clip(np.rint(pixels + rng.normal(0.0, sigma, pixels.shape)), info.min, info.max)
        ds.PixelData = noisy.astype(ds.pixel_array.dtype).tobytes()
        sop_uid = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.AccessionNumber = ""
        yield ds
