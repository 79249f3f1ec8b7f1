"""Pixel Data checked as PS3.3 C.7.6.3 / PS3.5 8 define it for each photometric
interpretation: instances written by other toolkits (pydicom's test files: GDCM,
dcmtk, ...) are stored as received; inconsistent ones get 0xC212."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, UID

from node.pacs import status
from node.pacs.validate import InvalidInstance, check_pixel_data, expected_pixel_bytes
from tests.dicom_tools import dcmtk

# (file, what it exercises) - all valid instances from other toolkits
FOREIGN = [
    ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422, chroma subsampled, uncompressed"),
    ("examples_palette.dcm", "PALETTE COLOR ultrasound"),
    ("SC_rgb_small_odd.dcm", "RGB 3x3, odd length padded"),
    ("SC_rgb_small_odd_big_endian.dcm", "RGB, Explicit VR Big Endian"),
    ("liver_1frame.dcm", "1-bit segmentation"),
    ("MR_small_bigendian.dcm", "MONOCHROME2 16-bit, Big Endian"),
    ("SC_rgb_rle_2frame.dcm", "RGB RLE Lossless, 2 frames"),
    ("SC_rgb_jpeg_dcmtk.dcm", "YBR_FULL JPEG Baseline"),
    ("JPEG2000.dcm", "JPEG 2000"),
    ("examples_ybr_color.dcm", "YBR_FULL_422 JPEG multi-frame"),
]


PROPOSE = {"1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.50": "-xy",
           "1.2.840.10008.1.2.4.91": "-xw"}


def test_foreign_instances_of_every_interpretation_are_stored(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    paths = [get_testdata_file(name) for name, _ in FOREIGN]
    assert all(paths), "pydicom's bundled test files are missing"
    # -R: each file's SOP class (storescu's default list lacks Segmentation); -x?: its
    # compressed syntax first, then the uncompressed ones (the node takes the first).
    for path in paths:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        proc = dcmtk("storescu", "-R", PROPOSE.get(syntax, "-xe"), "-aet", "STORESCU",
                     "-aec", "MEDFED", "127.0.0.1", node.dicom_port, path)
        assert proc.returncode == 0 and "Failed" not in proc.stderr, (path, proc.stderr)
    rows = node.call(node.node.store.fetchall("SELECT sop_uid, path FROM instances"))
    stored = {uid: node.cfg.objects_dir / rel for uid, rel in rows}
    for path in paths:
        sent = pydicom.dcmread(path)
        assert sent.SOPInstanceUID in stored, f"{path} was not stored"
        kept = pydicom.dcmread(stored[sent.SOPInstanceUID])
        if sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2":
            # The node prefers Explicit VR Little Endian: storescu converted it.
            assert (kept.pixel_array == sent.pixel_array).all(), path
            continue
        assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID, path
        assert kept.PixelData == sent.PixelData


def _image(interpretation: str, samples: int, rows: int = 4, cols: int = 4, bits: int = 8,
           frames: int = 1, nbytes: int | None = None) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated = rows, cols, bits
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, interpretation
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\x00" * (nbytes if nbytes is not None else expected_pixel_bytes(ds))
    return ds


@pytest.mark.parametrize("interpretation,samples,rows,cols,bits,frames,want", [
    ("MONOCHROME2", 1, 4, 4, 16, 1, 32),
    ("PALETTE COLOR", 1, 4, 4, 8, 1, 16),
    ("RGB", 3, 3, 3, 8, 1, 27),
    ("YBR_FULL", 3, 4, 4, 8, 1, 48),
    ("YBR_FULL_422", 3, 4, 4, 8, 1, 32),     # Y Y Cb Cr per two pixels
    ("YBR_PARTIAL_422", 3, 4, 4, 8, 2, 64),
    ("YBR_PARTIAL_420", 3, 4, 4, 8, 1, 24),  # Cb Cr once per 2 x 2 block
    ("MONOCHROME2", 1, 3, 3, 1, 3, 4),       # 27 bits packed across frames
])
def test_expected_bytes_per_interpretation(interpretation: str, samples: int, rows: int,
                                           cols: int, bits: int, frames: int, want: int) -> None:
    assert expected_pixel_bytes(_image(interpretation, samples, rows, cols, bits, frames)) == want


@pytest.mark.parametrize("label,ds", [
    ("422 with full-rate chroma", _image("YBR_FULL_422", 3, nbytes=48)),
    ("RGB with one sample", _image("RGB", 1, nbytes=16)),
    ("MONOCHROME2 with three samples", _image("MONOCHROME2", 3, nbytes=48)),
    ("422 with odd columns", _image("YBR_FULL_422", 3, cols=3, nbytes=24)),
    ("pixel data too long", _image("MONOCHROME2", 1, nbytes=40)),
])
def test_inconsistent_pixel_data_refused(label: str, ds: Dataset) -> None:
    with pytest.raises(InvalidInstance) as err:
        check_pixel_data(ds, UID(ExplicitVRLittleEndian))
    assert err.value.status == status.PIXEL_DATA_INVALID, label
    assert err.value.reason


def test_float_pixel_data_length_checked() -> None:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 2, 2, 1
    ds.FloatPixelData = b"\x00" * 16
    check_pixel_data(ds, UID(ExplicitVRLittleEndian))
    ds.FloatPixelData = b"\x00" * 12
    with pytest.raises(InvalidInstance):
        check_pixel_data(ds, UID(ExplicitVRLittleEndian))
