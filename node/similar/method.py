"""What a similarity method is: a fixed feature extractor and a score over its vectors.

A site runs only methods it has vetted (the allowlist in its policy), so a method is
named by id AND version: the same id with another version may compute something else
and must be allowed again. Methods are pure numpy — a volume in, a vector out — so the
site can run them on its own data without any network access.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

METHOD_ID = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,16}$")
MAX_DIM = 4096


class MethodError(ValueError):
    """A method or a vector cannot be used as given (the message says why)."""


@dataclass(frozen=True)
class VolumeInput:
    """What a method sees of a series: voxels (any axis order, rescaled) and the modality."""

    voxels: np.ndarray
    modality: str


class SimilarityMethod(Protocol):
    """Implemented by built-ins and by entry points in group ``medfed.similarity_methods``."""

    id: str
    version: str
    dim: int

    def params(self) -> dict[str, Any]:
        """Every parameter that changes the vectors (recorded in provenance)."""
        ...

    def features(self, volume: VolumeInput) -> np.ndarray:
        """A float32 vector of length ``dim``, finite."""
        ...

    def score(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Similarity of ``query`` (dim,) to each row of ``candidates`` (n, dim): higher is closer."""
        ...


def check_method(method: Any) -> SimilarityMethod:
    """Refuse an object that does not look like a usable method (for entry points)."""
    for name in ("id", "version", "dim", "params", "features", "score"):
        if not hasattr(method, name):
            raise MethodError(f"similarity method lacks {name!r}")
    if not isinstance(method.id, str) or not METHOD_ID.match(method.id):
        raise MethodError("a similarity method id is 1-32 of a-z, 0-9, _ and -, starting with a letter")
    if not isinstance(method.version, str) or not VERSION.match(method.version):
        raise MethodError(f"method {method.id}: version must be 1-16 of 0-9 A-Z a-z . + -")
    if not isinstance(method.dim, int) or isinstance(method.dim, bool) or not 1 <= method.dim <= MAX_DIM:
        raise MethodError(f"method {method.id}: dim must be a whole number from 1 to {MAX_DIM}")
    return method


def vector_from_wire(values: object, dim: int) -> np.ndarray:
    """A vector from JSON: exactly ``dim`` finite numbers, else MethodError."""
    if not isinstance(values, list):
        raise MethodError("vector must be a list of numbers")
    if len(values) != dim:
        raise MethodError(f"vector has {len(values)} values; this method's vectors have {dim}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise MethodError("vector must hold numbers only")
    if not all(math.isfinite(v) for v in values):
        raise MethodError("vector holds NaN or infinite values")
    out = np.asarray(values, dtype=np.float64)
    if np.abs(out).max(initial=0.0) > 1e6:
        raise MethodError("vector values are out of range (|x| > 1e6)")
    return out.astype(np.float32)


def vector_to_wire(vector: np.ndarray) -> list[float]:
    return [round(float(v), 7) for v in np.asarray(vector, dtype=np.float32)]


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)


def cosine_scores(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors: one matrix-vector product over the whole site."""
    if candidates.size == 0:
        return np.zeros(0, dtype=np.float32)
    return (candidates @ unit(query)).astype(np.float32)


def block_mean(voxels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Down-sample to ``shape`` by averaging (nearest-neighbour resampling of the grid first,
    so any input size works, including one slice)."""
    data = np.asarray(voxels, dtype=np.float32)
    while data.ndim < len(shape):
        data = data[..., np.newaxis]
    # resample each axis to a multiple of the target, then average blocks
    for axis, target in enumerate(shape):
        n = data.shape[axis]
        factor = max(1, -(-n // target))
        idx = np.minimum((np.arange(target * factor) * n) // (target * factor), n - 1)
        data = np.take(data, idx, axis=axis)
    out_shape: list[int] = []
    for target, n in zip(shape, data.shape):
        out_shape.extend([target, n // target])
    return data.reshape(out_shape).mean(axis=tuple(range(1, 2 * len(shape), 2)))
