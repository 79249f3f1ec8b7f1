"""Pixel data for synthetic images: a smooth analytic phantom plus noise.

Why not random bytes: compression ratios, bundle sizes and viewer screenshots only mean
something if images look and compress like real ones (smooth organs, sharp edges, noisy
air). Every structure is an ellipsoid of one tissue, so a slice is a few painted ellipses
(each only over its bounding box) and one noise field — fast enough that tests and demos
can afford 512x512 series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Weighting = Literal["CT", "T1", "T2"]
MAX_STORED = 4095  # 12 bits stored
CT_OFFSET = 1024.0  # stored value = HU + 1024 (RescaleIntercept -1024)


@dataclass(frozen=True)
class Tissue:
    """One tissue's value under each weighting: CT in HU, MR in arbitrary signal units."""

    ct: float
    t1: float
    t2: float

    def value(self, weighting: Weighting) -> float:
        return {"CT": self.ct, "T1": self.t1, "T2": self.t2}[weighting]


AIR = Tissue(-1000, 0, 0)
FAT = Tissue(-90, 1100, 900)
MUSCLE = Tissue(45, 500, 350)
LUNG = Tissue(-850, 40, 60)
BONE = Tissue(900, 60, 50)
MARROW = Tissue(300, 900, 700)
BLOOD = Tissue(180, 700, 150)
HEART = Tissue(50, 550, 420)
LIVER = Tissue(60, 650, 300)
SPLEEN = Tissue(50, 480, 600)
KIDNEY = Tissue(150, 550, 800)
GAS = Tissue(-950, 10, 10)
GREY = Tissue(38, 600, 900)
WHITE = Tissue(28, 800, 650)
CSF = Tissue(8, 150, 1800)


@dataclass(frozen=True)
class Blob:
    """An ellipsoid of one tissue.

    (cx, cy) centre and (ax, ay) semi-axes in image units ([-1, 1] across the field of
    view, +y towards the patient's back); along the series (z in [0, 1]) its cross
    section is scaled by sqrt(1 - ((z - zc) / zr)^2), so organs appear, grow and vanish.
    ``shade`` brightens the centre smoothly so interiors are not flat.
    """

    tissue: Tissue
    cx: float
    cy: float
    ax: float
    ay: float
    zc: float = 0.5
    zr: float = 8.0
    shade: float = 0.0

    def scale_at(self, z: float) -> float:
        t = (z - self.zc) / self.zr
        return math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0


def _pair(tissue: Tissue, dx: float, *rest: float) -> tuple[Blob, Blob]:
    """Left/right organs (lungs, kidneys) mirrored about the midline."""
    return Blob(tissue, -dx, *rest), Blob(tissue, dx, *rest)


# Painted in order: the first blob is the body outline (it decides where body noise goes).
ANATOMY: dict[str, tuple[Blob, ...]] = {
    "CHEST": (
        Blob(FAT, 0, 0, 0.86, 0.62),
        Blob(MUSCLE, 0, 0, 0.80, 0.56),
        *_pair(LUNG, 0.36, -0.02, 0.26, 0.42, 0.45, 0.75, 0.3),
        Blob(HEART, 0.08, 0.0, 0.25, 0.22, 0.8, 0.45, 0.5),
        Blob(BLOOD, 0.1, 0.3, 0.055, 0.055),
        Blob(BONE, 0, -0.52, 0.07, 0.03),
        Blob(BONE, 0, 0.44, 0.10, 0.09),
        Blob(MARROW, 0, 0.44, 0.07, 0.06, shade=0.3),
    ),
    "ABDOMEN": (
        Blob(FAT, 0, 0, 0.90, 0.70),
        Blob(MUSCLE, 0, 0, 0.82, 0.62),
        Blob(LIVER, -0.35, -0.05, 0.42, 0.40, 0.3, 0.8, 0.4),
        Blob(SPLEEN, 0.5, 0.1, 0.16, 0.22, 0.3, 0.5, 0.3),
        *_pair(KIDNEY, 0.3, 0.3, 0.12, 0.16, 0.6, 0.35, 0.6),
        Blob(BLOOD, 0.05, 0.28, 0.05, 0.05),
        Blob(GAS, 0.2, -0.3, 0.07, 0.05, 0.7, 0.3),
        Blob(GAS, -0.1, -0.42, 0.05, 0.04, 0.5, 0.25),
        Blob(BONE, 0, 0.46, 0.11, 0.10),
        Blob(MARROW, 0, 0.46, 0.08, 0.07, shade=0.3),
    ),
    "HEAD": (
        Blob(MUSCLE, 0, 0, 0.78, 0.92, 0.3, 1.2),
        Blob(BONE, 0, 0, 0.74, 0.88, 0.3, 1.2),
        Blob(GREY, 0, 0, 0.68, 0.82, 0.3, 1.2, 0.2),
        Blob(WHITE, 0, 0.02, 0.52, 0.66, 0.35, 0.9, 0.3),
        *_pair(CSF, 0.1, -0.05, 0.05, 0.2, 0.5, 0.25),
    ),
}


@dataclass(frozen=True)
class Contrast:
    """How a series renders the anatomy: weighting and noise (sigma, in value units)."""

    weighting: Weighting
    noise: float


def random_lesions(rng: np.random.Generator, region: str) -> tuple[Blob, ...]:
    """2-4 small ellipsoids of random tissue inside the body, each spanning part of z."""
    reach = 0.35 if region == "HEAD" else 0.45
    lesions = []
    for _ in range(int(rng.integers(2, 5))):
        tissue = Tissue(float(rng.uniform(-20, 120)), float(rng.uniform(300, 1400)),
                        float(rng.uniform(300, 1800)))
        radius = float(rng.uniform(0.03, 0.08))
        lesions.append(
            Blob(
                tissue,
                float(rng.uniform(-reach, reach)),
                float(rng.uniform(-0.7 * reach, 0.7 * reach)),
                radius,
                radius * float(rng.uniform(0.8, 1.2)),
                float(rng.uniform(0.1, 0.9)),
                float(rng.uniform(0.05, 0.2)),
                0.6,
            )
        )
    return tuple(lesions)


def _axis(n: int) -> np.ndarray:
    """Pixel-centre coordinates in [-1, 1]."""
    return ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0).astype(np.float32)


def _paint(img: np.ndarray, mask: np.ndarray | None, x: np.ndarray, y: np.ndarray,
           blob: Blob, z: float, weighting: Weighting) -> None:
    """Paint one blob's cross-section at z into img (and mark it in mask, if given)."""
    scale = blob.scale_at(z)
    if scale <= 0.0:
        return
    ax, ay = blob.ax * scale, blob.ay * scale
    c0, c1 = np.searchsorted(x, [blob.cx - ax, blob.cx + ax])
    r0, r1 = np.searchsorted(y, [blob.cy - ay, blob.cy + ay])
    if c0 >= c1 or r0 >= r1:
        return
    r2 = ((x[c0:c1] - blob.cx) / ax)[None, :] ** 2 + ((y[r0:r1] - blob.cy) / ay)[:, None] ** 2
    inside = r2 <= 1.0
    value = blob.tissue.value(weighting)
    if blob.shade:
        spread = 40.0 if weighting == "CT" else 0.15 * value
        fill = value + blob.shade * spread * (1.0 - r2)
    else:
        fill = np.float32(value)
    np.copyto(img[r0:r1, c0:c1], fill, where=inside)
    if mask is not None:
        mask[r0:r1, c0:c1] |= inside


def render_slice(rows: int, cols: int, blobs: tuple[Blob, ...], z: float,
                 contrast: Contrast, rng: np.random.Generator) -> np.ndarray:
    """One uint16 slice (12 bits stored). CT values are HU + 1024; MR values are magnitudes."""
    x, y = _axis(cols), _axis(rows)
    weighting = contrast.weighting
    img = np.full((rows, cols), AIR.value(weighting), dtype=np.float32)
    body = np.zeros((rows, cols), dtype=bool)
    for i, blob in enumerate(blobs):
        _paint(img, body if i == 0 else None, x, y, blob, z, weighting)
    noise = rng.standard_normal((rows, cols), dtype=np.float32)
    if weighting == "CT":
        noise *= np.where(body, np.float32(contrast.noise), np.float32(contrast.noise / 4))
        img += noise
        img += CT_OFFSET
    else:
        # receive-coil shading (smooth, multiplicative), then magnitude noise as in MR
        img *= (1.0 + 0.12 * x)[None, :] + (0.08 * y)[:, None]
        img += noise * np.float32(contrast.noise)
        np.abs(img, out=img)
    np.clip(img, 0, MAX_STORED, out=img)
    return img.astype(np.uint16)
