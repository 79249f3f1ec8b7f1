"""Method "embed": a fixed random-projection embedding of the down-sampled volume.

No trained model can be shipped, so the embedding is a Johnson-Lindenstrauss projection:
a 16×16×16 block-mean volume (zero mean) times a Gaussian matrix drawn from a fixed
seed, to 128 numbers, unit norm. Cosine distances of the projection approximate those
of the volumes; every site draws the same matrix from the seed, so vectors compare
across sites without the matrix ever being sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .hist import normalised_intensities
from .method import VolumeInput, block_mean, cosine_scores, unit


class ProjectionMethod:
    id = "embed"
    version = "1"
    grid = (16, 16, 16)
    dim = 128
    seed = 20140414

    def __init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        size = int(np.prod(self.grid))
        self._matrix = (rng.standard_normal((self.dim, size)) / np.sqrt(self.dim)).astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {"grid": list(self.grid), "projection": "gaussian", "seed": self.seed,
                "intensities": "as method hist"}

    def features(self, volume: VolumeInput) -> np.ndarray:
        coarse = block_mean(normalised_intensities(volume), self.grid).ravel()
        return unit(self._matrix @ unit(coarse - coarse.mean()))

    def score(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return cosine_scores(query, candidates)
