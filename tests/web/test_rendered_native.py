"""Rendered frames read at their offset (``native_frame``) against the pydicom path:
the stored values must equal pydicom's ``pixel_array`` and the rendered pixels the
pydicom path's, for signed, MONOCHROME1, multi-frame, rescaled, RGB (both planar
configurations), implicit VR, long headers and sequences of undefined length."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

from node.store.ingest_local import encode_part10
from node.web.dicomweb.errors import NotFound
from node.web.dicomweb.instances import InstanceView
from node.web.dicomweb.native_frame import HEAD_BYTES, native_frame
from node.web.dicomweb.pixel_header import NotNative, read_pixel_header
from node.web.dicomweb.pixels import parse
from node.web.dicomweb.rendered import RenderOptions, render_frame, render_instance
from tests.pixel_instances import pixel_instance

RNG = np.random.default_rng(7)


def _ct(**kw: object) -> Dataset:
    """12 bits stored in 16, with junk in the 4 unused bits, rescaled and windowed."""
    values = RNG.integers(0, 4096, (64, 48), dtype=np.uint16) | np.uint16(0xA000)
    return pixel_instance(values, bits_stored=12, RescaleSlope="1.5", RescaleIntercept="-1024",
                     WindowCenter=["40", "400"], WindowWidth=["400", "1500"], **kw)


def _signed(**kw: object) -> Dataset:
    values = RNG.integers(-2048, 2048, (40, 40), dtype=np.int16)
    values[0, :4] = [-2048, 2047, -1, 0]
    return pixel_instance(values, bits_stored=12, signed=True, RescaleIntercept="-100",
                     ts=ImplicitVRLittleEndian, **kw)


def _mono1() -> Dataset:
    values = RNG.integers(0, 256, (33, 17), dtype=np.uint8)   # odd sizes: padded
    return pixel_instance(values, photometric="MONOCHROME1")       # no window: its range


def _multiframe() -> Dataset:
    values = np.stack([np.full((16, 24), 100 * (i + 1), dtype=np.uint16) +
                       RNG.integers(0, 50, (16, 24), dtype=np.uint16) for i in range(3)])
    return pixel_instance(values, frames=3, WindowCenter="200", WindowWidth="300")


def _rgb(planar: int, frames: int = 1) -> Dataset:
    shape = (frames, 20, 30, 3) if frames > 1 else (20, 30, 3)
    return pixel_instance(RNG.integers(0, 256, shape, dtype=np.uint8), photometric="RGB",
                     planar=planar, frames=frames)


def _long_header() -> Dataset:
    ds = _ct()
    ds.add_new(0x00420011, "OB", b"x" * (HEAD_BYTES + 5000))   # header past the first read
    return ds


CASES = {
    "ct-rescale-bits-stored": _ct, "signed-implicit": _signed, "monochrome1-8bit": _mono1,
    "multiframe": _multiframe, "rgb": lambda: _rgb(0), "rgb-planar": lambda: _rgb(1),
    "rgb-planar-multiframe": lambda: _rgb(1, frames=2), "long-header": _long_header,
}


def _views(ds: Dataset, tmp_path: Path) -> list[InstanceView]:
    data = encode_part10(ds)
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    ts = str(ds.file_meta.TransferSyntaxUID)
    return [InstanceView("1", "2", "3", "4", ts, path=path),
            InstanceView("1", "2", "3", "4", ts, data=data)]


def _pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_stored_values_equal_pydicom(name: str, tmp_path: Path) -> None:
    ds = CASES[name]()
    frames = int(ds.get("NumberOfFrames", 1))
    for view in _views(ds, tmp_path):
        expected = parse(view.read_sync()).pixel_array
        for number in range(1, frames + 1):
            _header, values = native_frame(view, number)
            want = expected[number - 1] if frames > 1 else expected
            assert values.dtype == want.dtype
            np.testing.assert_array_equal(values, want)


OPTIONS = [RenderOptions("image/png"), RenderOptions("image/png", window=(0.0, 900.0)),
           RenderOptions("image/png", window=(100.0, 1.0)),
           RenderOptions("image/png", window=(50.0, 300.0), sigmoid=True),
           RenderOptions("image/png", viewport=(10, 10))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_pixels_equal_pydicom_path(name: str, tmp_path: Path) -> None:
    ds = CASES[name]()
    frames = int(ds.get("NumberOfFrames", 1))
    for view in _views(ds, tmp_path):
        for opts in OPTIONS:
            for number in range(1, frames + 1):
                fast = _pixels(render_instance(view, number, opts))
                slow = _pixels(render_frame(parse(view.read_sync()), number, opts))
                np.testing.assert_array_equal(fast, slow)


def test_grey_levels_by_hand(tmp_path: Path) -> None:
    """Values chosen so each step shows: unused bits masked, slope and intercept applied,
    the instance's first window, MONOCHROME1 inverted."""
    values = np.array([[0xF000 | 0, 0x0000 | 700, 1000, 4095]], dtype=np.uint16)
    for photometric, flip in (("MONOCHROME2", False), ("MONOCHROME1", True)):
        ds = pixel_instance(values, bits_stored=12, photometric=photometric, RescaleSlope="2",
                       RescaleIntercept="-1000", WindowCenter=["400", "0"],
                       WindowWidth=["801", "1"])
        view = _views(ds, tmp_path)[0]
        grey = _pixels(render_instance(view, 1, RenderOptions("image/png")))[0]
        # modality values -1000, 400, 1000, 7190; window 400 +- 400
        expected = np.array([0, 127, 255, 255], dtype=np.uint8)
        np.testing.assert_array_equal(grey, 255 - expected if flip else expected)


def test_multiframe_frames_differ_and_bounds(tmp_path: Path) -> None:
    view = _views(_multiframe(), tmp_path)[0]
    means = [float(native_frame(view, n)[1].mean()) for n in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    with pytest.raises(NotFound):
        native_frame(view, 4)
    with pytest.raises(NotFound):
        render_instance(view, 0, RenderOptions())


def test_header_offsets(tmp_path: Path) -> None:
    ds = _multiframe()
    data = encode_part10(ds)
    header = read_pixel_header(data)
    assert (header.rows, header.columns, header.frames) == (16, 24, 3)
    assert data[header.offset:header.offset + header.length] == ds.PixelData
    assert (header.window_center, header.window_width) == (200.0, 300.0)


@pytest.mark.parametrize("ts", [RLELossless, ExplicitVRBigEndian])
def test_other_transfer_syntaxes_use_pydicom(ts: str, tmp_path: Path) -> None:
    ds = _ct()
    if ts == RLELossless:
        ds.compress(RLELossless)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    with pytest.raises(NotNative):
        read_pixel_header(encode_part10(ds))
    view = _views(ds, tmp_path)[0]
    (tmp_path / "native").mkdir()
    expected = _pixels(render_instance(_views(_ct_like(ds), tmp_path / "native")[0], 1,
                                       RenderOptions("image/png")))
    np.testing.assert_array_equal(_pixels(render_instance(view, 1, RenderOptions("image/png"))),
                                  expected)


def _ct_like(ds: Dataset) -> Dataset:
    """The same pixels stored uncompressed little endian (the fast path)."""
    copy = parse(encode_part10(ds))
    values = copy.pixel_array
    return pixel_instance(values.astype(np.uint16), bits_stored=12, RescaleSlope="1.5",
                     RescaleIntercept="-1024", WindowCenter=["40", "400"],
                     WindowWidth=["400", "1500"])


def test_thirty_two_bit_falls_back(tmp_path: Path) -> None:
    ds = pixel_instance(RNG.integers(0, 1 << 20, (8, 8), dtype=np.uint32), WindowCenter="5000",
                   WindowWidth="10000")
    with pytest.raises(NotNative):
        read_pixel_header(encode_part10(ds))
    view = _views(ds, tmp_path)[0]
    assert _pixels(render_instance(view, 1, RenderOptions("image/png"))).shape == (8, 8)
