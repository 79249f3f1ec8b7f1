"""Part-10 test instances with given pixel values, made with pydicom: any bits stored,
signedness, photometric interpretation, frames and planar configuration, with a
sequence of undefined length (and a nested one) before the pixel description."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def pixel_instance(values: np.ndarray, *, bits_stored: int | None = None, signed: bool = False,
              photometric: str = "MONOCHROME2", frames: int = 1, planar: int = 0,
              ts: str = ExplicitVRLittleEndian, **extra: object) -> Dataset:
    """A Part-10 dataset whose pixel data is ``values`` (frames x rows x cols [x 3])."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = "P1"
    # a sequence of undefined length (with a nested one) before the pixel description
    inner = Dataset()
    inner.add_new(0x00081155, "UI", generate_uid())
    item = Dataset()
    item.add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2")
    item.add_new(0x00089215, "SQ", Sequence([inner]))
    ds.add_new(0x00081140, "SQ", Sequence([item, Dataset()]))
    ds[0x00081140].is_undefined_length = True
    item[0x00089215].is_undefined_length = True
    rgb = photometric == "RGB"
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = planar
    shape = values.shape[1:] if frames > 1 else values.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    bits = values.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit = (bits_stored or bits) - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in extra.items():
        setattr(ds, key, value)
    stored = values
    if rgb and planar == 1:
        stored = np.moveaxis(values, -1, -3)       # ... x 3 x rows x cols
    ds.PixelData = np.ascontiguousarray(stored).astype(values.dtype.newbyteorder("<")).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    return ds
