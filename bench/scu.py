"""The client side of the ingest benchmark: dcmtk tools and one pynetdicom SCU.

Both servers get exactly these calls, so medfed and Orthanc are measured the same way
the anchor script measures Orthanc (dcmtk by absolute path, TCP_NODELAY=1).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from .figures import Rate
from node.testing.nodes import free_port  # noqa: F401  (re-exported for callers of this module)

DCMTK = Path("/usr/bin")
HOST = "127.0.0.1"
TOOL_TIMEOUT_S = 300.0


class BenchError(Exception):
    """A benchmark step failed; the message says which and how to look into it."""


@dataclass(frozen=True)
class Target:
    """A DICOM server under test."""

    port: int
    ae_title: str


def dcmtk_env() -> dict[str, str]:
    """Debian's dcmtk leaves Nagle on unless TCP_NODELAY=1 (then ~40 ms per exchange)."""
    return dict(os.environ, TCP_NODELAY="1")



def _dcmtk(tool: str, *args: str | int | Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(DCMTK / tool), *map(str, args)], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(tool: str, proc: subprocess.Popen[bytes]) -> None:
    try:
        _out, err = proc.communicate(timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"{tool} did not finish within {TOOL_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise BenchError(f"{tool} exited with {proc.returncode}: {' | '.join(tail)}")


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Round-robin groups, as the anchor script splits its parallel senders."""
    return [list(files[k::parts]) for k in range(parts) if files[k::parts]]


def store(target: Target, files: Sequence[Path], senders: int = 1) -> float:
    """Seconds for ``senders`` parallel storescu processes (one association each)."""
    groups = split(files, senders)
    t0 = time.perf_counter()
    procs = [_dcmtk("storescu", "-aet", "STORESCU", "-aec", target.ae_title, HOST,
                    target.port, *group) for group in groups]
    for proc in procs:
        _finish("storescu", proc)
    return time.perf_counter() - t0


def get_series(target: Target, study_uid: str, series_uid: str, out: Path) -> Rate:
    """C-GET of one series with getscu into ``out``; counts what actually arrived."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _finish("getscu", _dcmtk("getscu", "-aet", "GETSCU", "-aec", target.ae_title, "-S",
                             "-k", "QueryRetrieveLevel=SERIES",
                             "-k", f"StudyInstanceUID={study_uid}",
                             "-k", f"SeriesInstanceUID={series_uid}",
                             "-od", out, HOST, target.port))
    seconds = time.perf_counter() - t0
    got = [p for p in out.rglob("*") if p.is_file()]
    return Rate(seconds, len(got), sum(p.stat().st_size for p in got))


def _findscu(target: Target, patient_id: str, *more: str | int) -> subprocess.Popen[bytes]:
    """dcmtk findscu, study level by PatientID (Study Root), with ``more`` options."""
    return _dcmtk("findscu", "-aet", "FINDSCU", "-aec", target.ae_title, "-S",
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}",
                  "-k", "StudyInstanceUID", *more, HOST, target.port)


def find_repeat_ms(target: Target, patient_id: str, repeats: int) -> float:
    """Milliseconds per study-level C-FIND with dcmtk ``findscu --repeat``: the time of
    ``repeats`` queries on one association minus that of one, over ``repeats - 1``, so
    neither process start nor association set-up is in the figure."""
    def timed(n: int) -> float:
        t0 = time.perf_counter()
        _finish("findscu", _findscu(target, patient_id, "--repeat", n))
        return time.perf_counter() - t0

    one = min(timed(1) for _ in range(3))
    return max(timed(repeats) - one, 0.0) / (repeats - 1) * 1e3


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"storescp exited with {proc.returncode} before listening")
        try:
            socket.create_connection((HOST, port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"storescp did not listen on port {port} within {timeout:.0f} s")


def move_series(target: Target, dest_ae: str, dest_port: int, study_uid: str,
                series_uid: str, out: Path) -> Rate:
    """C-MOVE of one series with movescu to a dcmtk storescp on ``dest_port`` (which
    the server must know as ``dest_ae``); counts what the storescp received."""
    out.mkdir(parents=True, exist_ok=True)
    scp = subprocess.Popen([str(DCMTK / "storescp"), "-aet", dest_ae, "-od", str(out),
                            str(dest_port)], env=dcmtk_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        _wait_listening(dest_port, scp)
        t0 = time.perf_counter()
        _finish("movescu", _dcmtk("movescu", "-aet", "MOVESCU", "-aec", target.ae_title,
                                  "-aem", dest_ae, "-S", "-k", "QueryRetrieveLevel=SERIES",
                                  "-k", f"StudyInstanceUID={study_uid}",
                                  "-k", f"SeriesInstanceUID={series_uid}", HOST, target.port))
        seconds = time.perf_counter() - t0
    finally:
        scp.terminate()
        try:
            scp.wait(10)
        except subprocess.TimeoutExpired:
            scp.kill()
            scp.wait()
    got = [p for p in out.rglob("*") if p.is_file()]
    return Rate(seconds, len(got), sum(p.stat().st_size for p in got))


def _find_query(patient_id: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    return query


def _find_ae() -> AE:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(FIND)
    return ae


def _associate(ae: AE, target: Target):  # type: ignore[no-untyped-def]
    assoc = ae.associate(HOST, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        raise BenchError(f"C-FIND association to {target.ae_title} on port {target.port} "
                         "was refused (is PYNETDICOM@127.0.0.1 allowed?)")
    return assoc


def _matches(assoc, query: Dataset) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for st, _ds in assoc.send_c_find(query, FIND)
               if st and st.Status in (0xFF00, 0xFF01))


def find_latencies(target: Target, patient_id: str, repeats: int) -> tuple[list[float], int]:
    """Study-level C-FIND by PatientID, ``repeats`` times on one open association with
    TCP_NODELAY on the SCU socket (pynetdicom never sets it). Returns (ms each, matches
    in the last answer)."""
    query = _find_query(patient_id)
    assoc = _associate(_find_ae(), target)
    samples: list[float] = []
    matches = 0
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(repeats):
            t0 = time.perf_counter()
            matches = _matches(assoc, query)
            samples.append((time.perf_counter() - t0) * 1e3)
    finally:
        assoc.release()
    return samples, matches


def find_fresh_latencies(target: Target, patient_id: str, repeats: int = 20) -> list[float]:
    """The same query from pynetdicom with a new association each time (associate, one
    C-FIND, release: how most workstations ask), as the anchor script's
    ``find_pynetdicom_fresh_assoc`` measures Orthanc. Milliseconds each."""
    query, ae = _find_query(patient_id), _find_ae()
    samples: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        assoc = _associate(ae, target)
        try:
            if _matches(assoc, query) < 1:
                raise BenchError(f"C-FIND to {target.ae_title} found no study")
        finally:
            assoc.release()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def findscu_process_latencies(target: Target, patient_id: str,
                              repeats: int = 50) -> list[float]:
    """One dcmtk ``findscu`` process per query (start, associate, query, release), the
    keys of the anchor script's ``find_study_latency``: what a PACS team times on the
    command line. Milliseconds each."""
    samples: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _finish("findscu", _findscu(target, patient_id, "-k", "StudyDate", "-k", "PatientName",
                                    "-k", "NumberOfStudyRelatedInstances"))
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples
