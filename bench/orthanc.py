"""The Orthanc anchor: runs /work/shared/bench/orthanc_baseline.sh on our series.

The script starts a private Orthanc, measures it with the same dcmtk tools and the same
pynetdicom C-FIND loop we use for medfed, stops it and prints JSON. We never copy it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from node.testing.orthanc import ORTHANC_AE, Orthanc, OrthancError

from .figures import Latency, Rate, ServerFigures
from .scu import BenchError, Target, dcmtk_env, find_repeat_ms, free_port, store

BASELINE = Path("/work/shared/bench/orthanc_baseline.sh")
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class OrthancRun:
    figures: ServerFigures
    version: str
    raw: dict[str, Any]


def _rate(entry: dict[str, Any], nbytes: int | None = None) -> Rate:
    return Rate(float(entry["seconds"]), int(entry["instances"]),
                nbytes if nbytes is not None else round(float(entry["MB"]) * 1e6))


def _latency(entry: dict[str, Any]) -> Latency:
    return Latency(int(entry["n"]), float(entry["p50_ms"]), float(entry["p95_ms"]),
                   float(entry["mean_ms"]))


def figures_from_json(out: dict[str, Any], parallel: int, nbytes: int) -> ServerFigures:
    """Our figures from the script's JSON. Ingest uses the exact byte count of the
    series (the JSON rounds to 0.1 MB); C-FIND is the pynetdicom loop with TCP_NODELAY,
    pynetdicom with a new association per query, and one findscu process per query."""
    try:
        expected = int(out["dataset"]["instances"])
        for key in ("ingest_1assoc", f"ingest_{parallel}parallel"):
            if int(out[key]["stored"]) != expected:
                raise BenchError(f"Orthanc stored {out[key]['stored']} of {expected} "
                                 f"instances in {key}")
        if int(out["cget_series"]["instances"]) != expected:
            raise BenchError(f"Orthanc's C-GET delivered {out['cget_series']['instances']} "
                             f"of {expected} instances")
        find = out["find_pynetdicom_same_assoc_nodelay"]
        return ServerFigures(
            find_fresh=_latency(out["find_pynetdicom_fresh_assoc"]),
            find_process=_latency(out["find_study_latency"]),
            ingest_1=_rate(out["ingest_1assoc"], nbytes),
            ingest_n=_rate(out[f"ingest_{parallel}parallel"], nbytes),
            find=_latency(find),
            get=_rate(out["cget_series"]),
            move=_rate(out["cmove_series"]) if "cmove_series" in out else None)
    except KeyError as exc:
        raise BenchError(f"the Orthanc baseline JSON has no {exc} entry; was pynetdicom "
                         f"importable by {sys.executable}?") from None


def find_repeat_orthanc(files: Sequence[Path], patient_id: str, repeats: int) -> float:
    """``findscu --repeat`` against a private Orthanc holding ``files`` (the baseline
    script does not measure it): ms per query, as scu.find_repeat_ms defines it."""
    modalities = {ae: ("127.0.0.1", 1) for ae in ("STORESCU", "FINDSCU")}
    try:
        with Orthanc(modalities) as orthanc:
            target = Target(orthanc.dicom_port, ORTHANC_AE)
            store(target, files)
            return find_repeat_ms(target, patient_id, repeats)
    except OrthancError as exc:
        raise BenchError(f"private Orthanc for findscu --repeat: {exc}") from None


def run_baseline(series_dir: Path, *, parallel: int, find_repeats: int,
                 nbytes: int) -> OrthancRun:
    """Run the anchor script on ``series_dir`` on free ports; raises BenchError."""
    if not BASELINE.exists():
        raise BenchError(f"{BASELINE} not found; run with --skip-orthanc")
    with tempfile.TemporaryDirectory(prefix="bench-orthanc-") as tmp:
        out_json = Path(tmp) / "orthanc.json"
        env = dict(dcmtk_env(), SERIES_DIR=str(series_dir), OUT_JSON=str(out_json),
                   DICOM_PORT=str(free_port()), HTTP_PORT=str(free_port()),
                   SCU_PORT=str(free_port()), PARALLEL=str(parallel),
                   FIND_REPEATS=str(find_repeats), NO_INSTALL="1", DICOMWEB="0",
                   PYTHON=sys.executable, DCMTK_BIN="/usr/bin")
        try:
            proc = subprocess.run(["bash", str(BASELINE)], env=env, capture_output=True,
                                  timeout=TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise BenchError(f"orthanc_baseline.sh took over {TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0 or not out_json.exists():
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"orthanc_baseline.sh exited with {proc.returncode}: "
                             + " | ".join(tail))
        raw = json.loads(out_json.read_text())
    return OrthancRun(figures_from_json(raw, parallel, nbytes), str(raw.get("orthanc", "?")),
                      raw)

