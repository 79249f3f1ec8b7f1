"""A frame as a consumer image (PNG or JPEG) with window/level (PS3.18 8.3.5.1 / 9.5).

Grey images: stored values -> modality LUT (RescaleSlope/Intercept) -> window (the
``window=center,width[,function]`` query parameter, else the instance's first
WindowCenter/WindowWidth, else its value range) -> 8 bits; MONOCHROME1 is inverted.
Colour (RGB) images are passed through. ``viewport=width,height`` scales down.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from .errors import NotFound, Unsupported

MEDIA = {"image/jpeg": "JPEG", "image/png": "PNG"}


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float] | None = None      # (center, width)
    sigmoid: bool = False
    quality: int = 90
    viewport: tuple[int, int] | None = None


def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")[:count]]
    except ValueError:
        values = []
    if len(values) != count:
        raise Unsupported(f"{what} must be {count} comma-separated numbers")
    return values


def render_options(query: dict[str, str], media_type: str) -> RenderOptions:
    window = None
    sigmoid = False
    if "window" in query:
        parts = query["window"].split(",")
        center, width = _numbers(",".join(parts[:2]), 2, "window")
        if width <= 0:
            raise Unsupported("the window width must be positive")
        function = parts[2].strip().lower() if len(parts) > 2 else "linear"
        if function not in ("linear", "sigmoid"):
            raise Unsupported("the window function must be linear or sigmoid")
        window, sigmoid = (center, width), function == "sigmoid"
    quality = 90
    if "quality" in query:
        quality = int(_numbers(query["quality"], 1, "quality")[0])
        if not 1 <= quality <= 100:
            raise Unsupported("quality must be from 1 to 100")
    viewport = None
    if "viewport" in query:
        w, h = _numbers(query["viewport"], 2, "viewport")
        if not (1 <= w <= 8192 and 1 <= h <= 8192):
            raise Unsupported("viewport must be two sizes from 1 to 8192")
        viewport = (int(w), int(h))
    return RenderOptions(media_type, window, sigmoid, quality, viewport)


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple)) or
                     type(value).__name__ == "MultiValue" else value)  # type: ignore[index]
    except (TypeError, ValueError):
        return None


def _grey_to_8bit(pixels: np.ndarray, ds: Dataset, opts: RenderOptions) -> np.ndarray:
    values = pixels.astype(np.float32)
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    if slope != 1.0 or intercept != 0.0:
        values = values * slope + intercept
    if opts.window is not None:
        center, width = opts.window
    else:
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is None or width is None or width <= 0:
            low, high = float(values.min()), float(values.max())
            center, width = (low + high) / 2, max(high - low, 1.0)
    if opts.sigmoid:
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif width <= 1.0:   # PS3.3 C.11.2.1.2.1: a width of 1 is a threshold
        out = np.where(values > center - 0.5, 255.0, 0.0)
    else:
        out = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    out = np.clip(out, 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    return out


def render_frame(ds: Dataset, number: int, opts: RenderOptions) -> bytes:
    """Frame ``number`` (1-based) of ``ds`` encoded as ``opts.media_type``."""
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data")
    try:
        array = ds.pixel_array
    except Exception as exc:  # no decoder for this transfer syntax
        raise Unsupported(f"this node cannot decode the stored pixel data for rendering "
                          f"({type(exc).__name__})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= number <= frames:
        raise NotFound(f"frame {number} does not exist (the instance has {frames})")
    frame = array[number - 1] if frames > 1 else array
    spp = int(ds.get("SamplesPerPixel", 1))
    if spp == 1:
        image = Image.fromarray(_grey_to_8bit(frame, ds, opts), mode="L")
    elif spp == 3:
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8), mode="RGB")
    else:
        raise Unsupported(f"rendering {spp} samples per pixel is not supported")
    if opts.viewport is not None:
        image.thumbnail(opts.viewport)
    out = io.BytesIO()
    if opts.media_type == "image/jpeg":
        image.save(out, "JPEG", quality=opts.quality)
    else:
        image.save(out, "PNG", compress_level=1)
    return out.getvalue()
