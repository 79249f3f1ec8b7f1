"""Turn one stored series into one bundle file: order, de-identify, compress, encrypt.

Memory stays at one instance plus one bundle chunk: the first pass reads only headers
(to order the slices), the second reads, transforms and encodes one file at a time.
The bundle is written to a temporary name, fsynced and renamed to ``<bundle id>.mfb``,
so a crash never leaves a half bundle under a real name. Runs in a worker thread.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pydicom
from pydicom.dataset import Dataset

from node.bundle.stream import BundleEncoder, BundleInfo, iter_bundle_chunks, order_instances
from node.deid.actions import DeidError, DeidKeys, DeidOptions, deidentify
from node.store.db import MetadataStore
from node.store.files import ObjectFiles

BUNDLE_SUFFIX = ".mfb"
TEMP_PREFIX = ".bundle-"


class SeriesUnavailable(Exception):
    """The series has no local files to bundle (unknown, or only known from upstream)."""


@dataclass(frozen=True)
class SourceInstance:
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class BuildResult:
    info: BundleInfo
    path: Path
    raw_bytes: int          # Part-10 bytes of the sources that went in
    refused: int            # instances left out (e.g. burned-in annotation)


async def series_sources(store: MetadataStore, files: ObjectFiles, series_uid: str) -> list[SourceInstance]:
    """The locally stored instances of a series (any order)."""
    rows = await store.fetchall(
        "SELECT i.path, i.sha256, i.size FROM instances i JOIN series s ON s.id = i.series_id "
        "WHERE s.series_uid = ? AND i.path IS NOT NULL", (series_uid,))
    if not rows:
        raise SeriesUnavailable("the series has no locally stored instances")
    return [SourceInstance(files.path(str(r[0])), str(r[1]), int(r[2])) for r in rows]


def content_digest(sources: Sequence[SourceInstance]) -> str:
    """Names the set of instances; changes when the series gains or changes an instance."""
    digest = hashlib.sha256()
    for sha in sorted(s.sha256 for s in sources):
        digest.update(bytes.fromhex(sha) if len(sha) == 64 else sha.encode())
    return digest.hexdigest()


def _read(path: Path, *, headers_only: bool = False) -> Dataset:
    with warnings.catch_warnings():  # pydicom warnings can quote values (PHI)
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=headers_only)


def _geometry(ds: Dataset) -> tuple[int | None, list[float] | None, list[float] | None]:
    def floats(keyword: str, n: int) -> list[float] | None:
        try:
            values = [float(v) for v in ds.get(keyword) or []]
        except (TypeError, ValueError):
            return None
        return values if len(values) == n else None

    number = ds.get("InstanceNumber")
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return number, floats("ImagePositionPatient", 3), floats("ImageOrientationPatient", 6)


def ordered_sources(sources: Sequence[SourceInstance]) -> list[SourceInstance]:
    """Bundle order (along the slice normal when the geometry allows it)."""
    geometry = [_geometry(_read(s.path, headers_only=True)) for s in sources]
    return [sources[i] for i in order_instances(geometry)]


def encode_dataset(ds: Dataset) -> bytes:
    """Part-10 bytes, the same way ``node.deid.files`` writes a de-identified file."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def deidentified_bytes(raw_path: Path, keys: DeidKeys, options: DeidOptions) -> bytes:
    return encode_dataset(deidentify(_read(raw_path), keys, options))


def _instances(sources: Sequence[SourceInstance], transform: Callable[[Path], bytes],
               counters: dict[str, int]) -> Iterator[bytes]:
    for source in sources:
        try:
            out = transform(source.path)
        except DeidError:
            counters["refused"] += 1
            continue
        counters["raw"] += source.size
        yield out


def build_bundle_file(sources: Sequence[SourceInstance], out_dir: Path, key: bytes,
                      transform: Callable[[Path], bytes]) -> BuildResult:
    """Write the bundle of ``transform(source)`` for each source, in the given order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counters = {"refused": 0, "raw": 0}
    encoder = BundleEncoder(key)
    fd, temp = tempfile.mkstemp(dir=out_dir, prefix=TEMP_PREFIX, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in iter_bundle_chunks(_instances(sources, transform, counters), encoder):
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        info = encoder.info
        target = out_dir / f"{info.bundle_id}{BUNDLE_SUFFIX}"
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return BuildResult(info, target, counters["raw"], counters["refused"])


def sweep_partial_bundles(out_dir: Path) -> int:
    """Remove temporary files left by a crash in the middle of a build."""
    if not out_dir.is_dir():
        return 0
    stale = list(out_dir.glob(TEMP_PREFIX + "*.part"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
