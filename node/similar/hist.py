"""Method "hist": an intensity histogram plus a coarse down-sampled volume (numpy only).

Two views of a series in one unit vector: the normalised histogram (what tissues, in
which proportions) and an 8×8×8 block-mean volume (where they are: zero mean, unit norm,
so its dot product is a correlation). The histogram gets weight 0.3 and the volume the
rest (sqrt(1 - 0.09)): noise broadens a histogram, so a heavier histogram term ranks a
noisy copy of a case below merely similar cases. The score is the cosine. CT is
read in Hounsfield units over a fixed window, so two CTs compare on absolute values;
other modalities are scaled to their own 1st-99th percentile range first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .method import VolumeInput, block_mean, cosine_scores, unit

CT_WINDOW = (-1024.0, 2048.0)
HIST_WEIGHT = 0.3
VOLUME_WEIGHT = round(float(np.sqrt(1 - HIST_WEIGHT ** 2)), 6)


def normalised_intensities(volume: VolumeInput) -> np.ndarray:
    """Voxels mapped to [0, 1]: CT by a fixed HU window, others by robust percentiles."""
    data = np.asarray(volume.voxels, dtype=np.float32)
    if volume.modality.upper() == "CT":
        low, high = CT_WINDOW
    else:
        low, high = (float(v) for v in np.percentile(data, [1.0, 99.0]))
        if high <= low:
            high = low + 1.0
    return np.clip((data - low) / (high - low), 0.0, 1.0)


class HistogramMethod:
    id = "hist"
    version = "1"
    bins = 32
    grid = (8, 8, 8)
    dim = bins + 8 * 8 * 8

    def params(self) -> dict[str, Any]:
        return {"bins": self.bins, "grid": list(self.grid), "ct_window_hu": list(CT_WINDOW),
                "other_modalities": "percentile 1-99", "weights": [HIST_WEIGHT, VOLUME_WEIGHT]}

    def features(self, volume: VolumeInput) -> np.ndarray:
        scaled = normalised_intensities(volume)
        counts, _ = np.histogram(scaled, bins=self.bins, range=(0.0, 1.0))
        hist = (counts / max(1, counts.sum())).astype(np.float32)
        coarse = block_mean(scaled, self.grid).ravel()
        coarse = unit(coarse - coarse.mean())
        return unit(np.concatenate([np.float32(HIST_WEIGHT) * unit(hist),
                                    np.float32(VOLUME_WEIGHT) * coarse]))

    def score(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return cosine_scores(query, candidates)
