"""`medfed demo`: one hospital node on loopback, fed and queried by standard DICOM tools.

What a PACS team would do by hand in its first hour, printed step by step: create a
node, send it a synthetic CT study with dcmtk storescu, find it with findscu, pull a
series back with getscu and push one to a viewer with movescu, then check the audit log.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
from rich.console import Console
from rich.table import Table

from ..audit.verify import verify
from .demo_federation import DemoPorts
from ..synth.generate import generate
from ..testing.nodes import NodeThread, loopback_config
from ..testing.nodes import free_port as _free_port

console = Console()
DCMTK = Path("/usr/bin")



def _tool(*args: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run([str(DCMTK / str(args[0])), *map(str, args[1:])],
                          capture_output=True, text=True, timeout=300, env=env)


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}", align="left")


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")


def run_demo(workdir: Path | None = None, *, base_port: int = 0, wait: bool = False) -> int:
    """``base_port``: the web app listens there and every other port follows it (0 = any
    free ports); ``wait``: keep the federation up for the web app until Ctrl-C."""
    for tool in ("storescu", "findscu", "getscu", "movescu", "storescp"):
        if not (DCMTK / tool).exists():
            console.print(f"[red]dcmtk's {tool} is missing[/red]: run 'make demo' "
                          "(it installs dcmtk) or 'apt-get install -y dcmtk'")
            return 2
    base = workdir or Path(tempfile.mkdtemp(prefix="medfed-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        return _run(base, DemoPorts(base_port), wait)
    except RuntimeError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)


def _run(base: Path, ports: DemoPorts, wait: bool) -> int:
    viewer_port = ports.offset(2) or _free_port()
    _step(1, "Start a hospital node (loopback, " + (f"ports from {ports.base}" if ports.base
                                                    else "ephemeral ports") + ")")
    cfg = loopback_config(base / "st-example", name="St Example Hospital",
                          destinations={"VIEWER": ("127.0.0.1", viewer_port)})
    cfg = dataclasses.replace(cfg, dicom=dataclasses.replace(cfg.dicom, port=ports.offset(1)))
    with NodeThread(cfg) as node:
        console.print(f"node {cfg.name!r}: DICOM MEDFED@127.0.0.1:{node.dicom_port}, "
                      f"node id {node.node.identity.node_id_hex[:16]}…, data {cfg.data_dir}")

        _step(2, "Write a synthetic CT study (2 patients x 2 series x 32 slices)")
        synth = generate(base / "modality", patients=2, studies=1, series=2, slices=32)
        s = synth.summary
        console.print(f"{s.instances} files, {s.bytes / 1e6:.1f} MB, patients "
                      + ", ".join(p.patient_id for p in s.phi))

        _step(3, "Send it with dcmtk storescu (C-STORE)")
        t0 = time.perf_counter()
        _check(_tool("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r",
                     "127.0.0.1", node.dicom_port, base / "modality"), "storescu")
        dt = time.perf_counter() - t0
        counts = node.call(node.node.store.counts())
        console.print(f"stored {counts.instances} instances in {dt:.2f} s "
                      f"({counts.instances / dt:.0f} inst/s); node now holds "
                      f"{counts.patients} patients, {counts.studies} studies, {counts.series} series")

        _step(4, "Find the studies with dcmtk findscu (C-FIND, study root)")
        pid = s.phi[0].patient_id
        proc = _tool("findscu", "-aet", "FINDSCU", "-aec", "MEDFED", "-S", "-k",
                     "QueryRetrieveLevel=SERIES", "-k", f"PatientID={pid}", "-k",
                     "StudyInstanceUID", "-k", "SeriesInstanceUID", "-k", "Modality", "-k",
                     "NumberOfSeriesRelatedInstances", "-k", "BodyPartExamined",
                     "127.0.0.1", node.dicom_port)
        _check(proc, "findscu")
        series = _parse_findscu(proc.stderr + proc.stdout)
        table = Table("series", "modality", "body part", "instances")
        for row in series:
            table.add_row(row.get("SeriesInstanceUID", "")[-20:], row.get("Modality", ""),
                          row.get("BodyPartExamined", ""),
                          row.get("NumberOfSeriesRelatedInstances", ""))
        console.print(f"patient {pid}: {len(series)} series")
        console.print(table)
        if not series:
            raise RuntimeError("C-FIND returned no series")

        _step(5, "Retrieve the first series with dcmtk getscu (C-GET)")
        out = base / "viewer-get"
        out.mkdir()
        target = series[0]["SeriesInstanceUID"]
        t0 = time.perf_counter()
        _check(_tool("getscu", "-aet", "GETSCU", "-aec", "MEDFED", "-S", "-k",
                     "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={series[0]['StudyInstanceUID']}",
                     "-k", f"SeriesInstanceUID={target}", "-od", out,
                     "127.0.0.1", node.dicom_port), "getscu")
        dt = time.perf_counter() - t0
        got = sorted(out.iterdir())
        identical = _same_pixels(got, synth.files)
        console.print(f"received {len(got)} instances in {dt:.2f} s; pixel data identical to "
                      f"what was sent: {identical}/{len(got)}")

        _step(6, "Push the same series to a viewer with dcmtk movescu (C-MOVE -> storescp)")
        view = base / "viewer-move"
        view.mkdir()
        scp = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "VIEWER", "-od", str(view),
                                str(viewer_port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            _check(_tool("movescu", "-aet", "MOVESCU", "-aec", "MEDFED", "-aem", "VIEWER", "-S",
                         "-k", "QueryRetrieveLevel=SERIES",
                         "-k", f"StudyInstanceUID={series[0]['StudyInstanceUID']}",
                         "-k", f"SeriesInstanceUID={target}",
                         "127.0.0.1", node.dicom_port), "movescu")
        finally:
            scp.terminate()
            scp.wait(10)
        console.print(f"viewer received {len(list(view.iterdir()))} instances")

        _step(7, "Check the audit log (hash chain + signed head)")
        node.node.audit.sync()
        report = verify(cfg.audit_path, node.node.identity.verify_key)
        console.print(f"audit log: {report.entries} entries, intact: {report.ok}")
    from .demo_federation import run as run_federation

    run_federation(base, 8, ports=ports, wait=wait)
    console.print("[green bold]demo finished[/green bold]: a hospital node served standard DICOM "
                  "tools; five hospitals answered one query under their own policies, and a "
                  "series was retrieved with its owner offline")
    return 0


def _parse_findscu(text: str) -> list[dict[str, str]]:
    """Pull keyword=value pairs out of findscu's response dumps."""
    results: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if "Find Response:" in line and "Pending" in line:
            current = {}
            results.append(current)
        elif current is not None and line.startswith("I: (") and "[" in line:
            value = line.split("[", 1)[1].rsplit("]", 1)[0].strip()
            keyword = line.rsplit("#", 1)[-1].split()[-1] if "#" in line else ""
            if keyword:
                current[keyword] = value
    return results


def _same_pixels(received: list[Path], sent: list[Path]) -> int:
    by_uid = {}
    for path in sent:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID] = path
    same = 0
    for path in received:
        got = pydicom.dcmread(path)
        src = by_uid.get(got.SOPInstanceUID)
        if src is not None and pydicom.dcmread(src).PixelData == got.PixelData:
            same += 1
    return same
