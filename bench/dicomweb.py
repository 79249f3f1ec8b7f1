"""DICOMweb benchmark: medfed against Orthanc 1.10 + its DICOMweb plugin, same series.

Per round (default 3, medfed and Orthanc alternating first): a fresh medfed node and a
fresh private Orthanc each receive the same 300-slice CT series by STOW-RS, then the
same plain HTTP client (requests, one keep-alive session) times QIDO-RS studies (p50 of
50), QIDO-RS instances of the series (median of 5), WADO-RS of the series read as a
byte stream (median of 3), series metadata (first request, then median of 3), a
rendered JPEG of the middle slice (p50 of 20) and of 20 other slices asked once each
(p50: a frame neither server has rendered before). Then a 7-node federation whose peer
links go through the shared WAN emulator (20 ms one way) times federated QIDO-RS studies
at one node (p50 of 30). The medfed node is made and run by the medfed command (its own
process, the web app's server and login, a token from ``medfed user login``), as
Orthanc runs in its own.

``python -m bench.dicomweb [--slices 300] [--rounds 3] [--skip-wan] [--no-write]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import requests

from node.store.ingest_local import ingest_dataset
from node.synth.generate import generate, iter_datasets
from node.testing.dicomweb import LoopThread, serve_dicomweb, user_token

from .medfed_node import MedfedNode
from .dicomweb_report import Rounds, federated_line, p50, table
from .results import load_average, stamp, write_section
from .wan_links import Link

SECTION = "DICOMweb (QIDO-RS / WADO-RS / STOW-RS) vs Orthanc DICOMweb plugin"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STOW_BATCH = 50
DISTINCT = 20          # slices rendered once each
PASSWORD = "bench password, long enough"


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _stow(session: requests.Session, url: str, files: list[Path]) -> float:
    """inst/s of STOW-RS of ``files`` in requests of STOW_BATCH instances."""
    boundary = "benchboundary0123456789"
    start = time.perf_counter()
    for i in range(0, len(files), STOW_BATCH):
        body = bytearray()
        for path in files[i:i + STOW_BATCH]:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            body += path.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        r = session.post(url + "/studies", data=bytes(body), timeout=600, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        if r.status_code != 200:
            raise RuntimeError(f"STOW-RS to {url} answered {r.status_code}: {r.text[:200]}")
    return len(files) / (time.perf_counter() - start)


def measure(session: requests.Session, url: str, files: list[Path], uids: tuple[str, str, str],
            rounds: Rounds, who: str, spread: list[str]) -> None:
    study, series, middle = uids
    rounds.add(who, "stow", _stow(session, url, files))

    def get(path: str, accept: str = "application/dicom+json") -> bytes:
        r = session.get(url + path, headers={"Accept": accept}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url}{path} answered {r.status_code}: {r.text[:200]}")
        return r.content

    rounds.add(who, "metadata_cold", _timed(lambda: get(f"/studies/{study}/series/{series}/metadata"), 1)[0])
    rounds.add(who, "metadata", p50(_timed(lambda: get(f"/studies/{study}/series/{series}/metadata"), 3)))
    rounds.add(who, "qido_studies_p50", p50(_timed(lambda: get("/studies"), 50)))
    rounds.add(who, "qido_instances", p50(_timed(
        lambda: get(f"/studies/{study}/series/{series}/instances"), 5)))
    total = [0]

    def stream() -> None:
        with session.get(f"{url}/studies/{study}/series/{series}", stream=True, timeout=600,
                         headers={"Accept": 'multipart/related; type="application/dicom"'}) as r:
            total[0] = sum(len(c) for c in r.iter_content(1 << 20))
    stream()
    ms = p50(_timed(stream, 3))
    rounds.add(who, "wado_series", total[0] / ms / 1000)
    rounds.add(who, "rendered_p50", p50(_timed(lambda: get(
        f"/studies/{study}/series/{series}/instances/{middle}/rendered", "image/jpeg"), 20)))
    each = iter(spread)
    rounds.add(who, "rendered_distinct_p50", p50(_timed(lambda: get(
        f"/studies/{study}/series/{series}/instances/{next(each)}/rendered", "image/jpeg"),
        len(spread))))


def medfed_round(work: Path, files: list[Path], uids: tuple[str, str, str], rounds: Rounds,
                 spread: list[str]) -> None:
    """A fresh node made by `medfed init` + `medfed run` (its own process, the web app's
    server and login), measured over HTTP with a token from `medfed user login`."""
    with MedfedNode(work / "medfed") as node:
        url = node.wait_for_web() + "/dicomweb"
        config = str(node.config)
        for args, stdin in ((["user", "add", "bench", "--role", "clinician", "--department",
                              "radiology", "--password-stdin"], f"{PASSWORD}\n{PASSWORD}\n"),
                            (["user", "login", "bench", "--print", "--password-stdin"],
                             f"{PASSWORD}\n")):
            done = subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", config],
                                  input=stdin, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"medfed {args[0]} {args[1]} failed: {done.stderr[-300:]}")
        token = done.stdout.strip().splitlines()[-1]
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            measure(session, url, files, uids, rounds, "medfed", spread)


def orthanc_round(files: list[Path], uids: tuple[str, str, str], rounds: Rounds,
                  spread: list[str]) -> str:
    from tests.orthanc import Orthanc

    orthanc = Orthanc({}, extra_config={"Plugins": [PLUGIN], "HttpThreadsCount": 8,
                                        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    with orthanc:
        version = str(orthanc.rest("GET", "/system").get("Version", "?"))
        with requests.Session() as session:
            measure(session, orthanc.url + "/dicom-web", files, uids, rounds, "orthanc", spread)
    return version


async def _federated(base: Path, queries: int, one_way_ms: float) -> tuple[list[float], str]:
    from .wan_fed import start_wan_federation

    fed = await start_wan_federation(base)
    requester = 1
    try:
        for i, node in enumerate(fed.nodes):
            for ds in iter_datasets(patients=1, studies=1, series=1, slices=2, rows=16, cols=16,
                                    seed=40 + i, patient_offset=10 * i):
                await ingest_dataset(node.store, node.files, ds)
        token = await asyncio.to_thread(user_token, fed.nodes[requester], "bench")
        served = await serve_dicomweb(fed.nodes[requester])
        times: list[float] = []
        statuses: set[str] = set()
        async with fed.links(requester, Link(1000.0, one_way_ms)), aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {token}"}) as client:
            for n in range(queries + 3):          # 3 warm-up queries (TLS sessions open)
                t = time.perf_counter()
                async with client.get(served.url + "/studies") as r:
                    await r.read()
                    statuses.add(r.headers.get("X-Medfed-Sites", "?"))
                if n >= 3:
                    times.append((time.perf_counter() - t) * 1000)
        await served.stop()
        return times, " / ".join(sorted(statuses))
    finally:
        await fed.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dicomweb")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-wan", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv or [])
    started_load = load_average()
    rounds = Rounds()
    version = "?"
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        work = Path(tmp)
        files = generate(work / "series", patients=1, studies=1, series=1, slices=args.slices,
                         rows=512, cols=512, seed=1).files
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in (files[0], files[len(files) // 2])]
        uids = (str(heads[0].StudyInstanceUID), str(heads[0].SeriesInstanceUID),
                str(heads[1].SOPInstanceUID))
        others = [f for f in files[::max(1, len(files) // DISTINCT)] if f != files[len(files) // 2]]
        spread = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                  for f in others[:DISTINCT]]
        nbytes = sum(f.stat().st_size for f in files)
        for r in range(args.rounds):
            order = ("medfed", "orthanc") if r % 2 == 0 else ("orthanc", "medfed")
            for who in order:
                if who == "medfed":
                    medfed_round(work / f"round{r}", files, uids, rounds, spread)
                else:
                    version = orthanc_round(files, uids, rounds, spread)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        fed_rows = ""
        if not args.skip_wan:
            loop = LoopThread("bench-dicomweb-wan")
            try:
                times, statuses = loop.call(_federated(work / "wan", 30, 20.0), timeout=600)
            finally:
                loop.close()
            p95 = statistics.quantiles(times, n=20)[-1]
            fed_rows = ("| measure | p50 | p95 | target 2 RTT + 100 ms | | site statuses |\n"
                        "|---|---:|---:|---:|---|---|\n"
                        + federated_line(p50(times), p95, 20.0, 7, statuses))
    body = (stamp() + f"- load average when the benchmark started (1/5/15 min): {started_load}\n"
            f"- rounds: {args.rounds}, medfed and Orthanc alternating; per-measure medians over rounds\n"
            f"- series: {args.slices} CT slices 512x512 16-bit, {nbytes / 1e6:.1f} MB "
            "(node.synth.generate, seed 1), loaded into each server by STOW-RS (requests of "
            f"{STOW_BATCH} instances)\n"
            f"- anchor: Orthanc {version} + DICOMweb plugin (Debian orthanc-dicomweb), fresh "
            "private instance per round, HttpThreadsCount 8\n"
            "- client: python requests, one keep-alive session, same code for both; medfed: "
            "`medfed init` + `medfed run` (the web app's server, bearer token from `medfed user "
            "login`), Orthanc: no authentication\n"
            "- command: `python -m bench.dicomweb`\n\n" + table(rounds) + "\n\n"
            + (fed_rows + "\n\nFederated: 7 nodes (`bench.wan_fed`), peer links through "
               "wan_proxy at 20 ms one way (RTT 40 ms), 1 Gbit/s; QIDO-RS /studies at one "
               "node, which asks every site (broadcast: no filter to narrow by) and answers "
               "with all sites' rows; 3 warm-up queries, then 30 timed.\n" if fed_rows else ""))
    print(body)
    if not args.no_write:
        print(f"written to {write_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
