"""Edge: de-identify a folder of DICOM files into another folder.

Output files are named only by their new (keyed) UIDs, STUDY/SERIES/SOP.dcm, so no
patient data leaks through paths. Each file is written to a temporary name, fsynced and
renamed, so a crash or error never leaves a partial file under a real name.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length

from node.deid.actions import DeidError, DeidKeys, DeidOptions, deidentify

TEMP_PREFIX, TEMP_SUFFIX = ".deid-", ".part"


class FolderError(Exception):
    """The input/output folders cannot be used as given."""


class UnusableInstance(Exception):
    """The file parsed, but is not a complete instance worth sharing."""


@dataclass(frozen=True)
class FileOutcome:
    """One input file: status is done / refused / failed / skipped."""

    source: str
    status: str
    reason: str = ""
    output: str = ""


@dataclass
class FolderReport:
    """Counts per status, and one outcome per input file (paths relative to the input folder)."""

    done: int = 0
    refused: int = 0
    failed: int = 0
    skipped: int = 0
    outcomes: list[FileOutcome] = field(default_factory=list)

    def add(self, outcome: FileOutcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        self.outcomes.append(outcome)


def _atomic_write(ds: pydicom.Dataset, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            pydicom.dcmwrite(handle, ds, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _check_complete(ds: pydicom.Dataset) -> None:
    """Lenient parsing accepts truncated or garbage files; refuse to pass those on."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not syntax or "SOPClassUID" not in ds:
        raise UnusableInstance("not a usable DICOM instance: no Transfer Syntax UID or SOP Class UID")
    if "PixelData" in ds and not syntax.is_encapsulated and len(ds.PixelData) < get_expected_length(ds):
        raise UnusableInstance("pixel data is shorter than Rows x Columns x frames says: the file is truncated")


def _output_path(ds: pydicom.Dataset) -> Path:
    parts = [str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    if not all(parts):
        raise UnusableInstance("instance lacks Study/Series/SOP Instance UID, so it has no place in the output")
    return Path(parts[0], parts[1], parts[2] + ".dcm")


def deidentify_file(source: Path, out_dir: Path, keys: DeidKeys, options: DeidOptions, name: str) -> FileOutcome:
    """One file → one outcome; every failure is caught and described without patient data."""
    try:
        with warnings.catch_warnings():  # pydicom warnings can quote element values (PHI)
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(source)
            _check_complete(ds)
            clean = deidentify(ds, keys, options)
            relative = _output_path(clean)
            _atomic_write(clean, out_dir / relative)
    except InvalidDicomError:
        return FileOutcome(name, "skipped", "not a DICOM Part-10 file (no 'DICM' header)")
    except DeidError as exc:
        return FileOutcome(name, "refused", f"{type(exc).__name__}: {exc}")
    except UnusableInstance as exc:
        return FileOutcome(name, "failed", str(exc))
    except OSError as exc:
        return FileOutcome(name, "failed", f"file system error ({type(exc).__name__}, errno {exc.errno})")
    except Exception as exc:  # malformed DICOM raises many types; never crash the batch
        return FileOutcome(name, "failed", f"unreadable or invalid DICOM ({type(exc).__name__}); check it with dcmdump")
    return FileOutcome(name, "done", output=str(relative))


def deidentify_folder(
    in_dir: Path, out_dir: Path, keys: DeidKeys, options: DeidOptions = DeidOptions()
) -> FolderReport:
    """De-identify every file under in_dir (recursively) into out_dir."""
    in_dir, out_dir = in_dir.resolve(), out_dir.resolve()
    if not in_dir.is_dir():
        raise FolderError(f"input folder {in_dir} does not exist or is not a folder")
    if out_dir == in_dir or out_dir.is_relative_to(in_dir):
        raise FolderError("the output folder must not be the input folder or inside it")
    if in_dir.is_relative_to(out_dir):
        raise FolderError("the input folder must not be inside the output folder")
    sources = sorted(p for p in in_dir.rglob("*") if p.is_file())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.rglob(TEMP_PREFIX + "*" + TEMP_SUFFIX):  # left by a killed earlier run
            stale.unlink()
    except OSError as exc:
        raise FolderError(f"cannot prepare output folder {out_dir}: {type(exc).__name__}") from exc
    report = FolderReport()
    for source in sources:
        report.add(deidentify_file(source, out_dir, keys, options, str(source.relative_to(in_dir))))
    return report
