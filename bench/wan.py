"""``python -m bench.wan``: series retrieval over an emulated WAN, medfed vs Orthanc C-GET.

Issue 6. One invocation runs, on the same 300-slice 512x512 CT series and the same links
(/work/shared/bench/wan_proxy.py: one-way delay and a shared token bucket):
  1. Orthanc's C-GET (/work/shared/bench/orthanc_wan_baseline.sh, SERIES_DIR = our files);
  2. medfed bundle retrieval, owner path, per link (and once without a proxy link);
  3. medfed retrieval with the owner down (replica + 2 of 3 key shares), per link;
  4. the owner back up, peak RSS of a requester (its own process) fetching a ~1 GB
     series (--rss-gb): last, so its memory churn reaches no timed row.
Times are wall clock of ``Retriever.fetch`` into a DICOM folder, so they include the TLS
handshake, decryption, decompression and writing the files. Targets: within 10 % of the
compressed-size link limit (bundle bytes / rate + RTT), ≥ 3.3× faster than C-GET at
100 Mbit/s / 20 ms and ≥ 10× at 1 Gbit/s / 20 ms; peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import stamp, write_section
from bench.wan_fed import (
    COLD,
    RUNNING,
    RUNNING_IDLE_S,
    WARM,
    Published,
    WanFederation,
    pick_requester,
    publish,
    read_files,
    start_wan_federation,
)
from bench.wan_links import (
    RSS_TARGET_MB,
    Link,
    OrthancLink,
    Row,
    load_orthanc_json,
    parse_links,
    table,
)
from bench.wan_proxy_ctl import SHARED_BENCH, free_port
from bench.wan_requester import ChildArgs, Fetched, RequesterProcess
from node.synth.generate import generate, iter_datasets

SECTION = "wan"
MODES = (COLD, RUNNING, WARM)    # the requester's state before a fetch (bench.wan_fed.prepare)
SLICE_BYTES = 525_826          # one 512x512 synthetic CT slice as Part-10
ORTHANC_PORT_VARS = ("DICOM_PORT", "HTTP_PORT", "SCU_PORT", "RAW_PORT", "PROXY_PORT",
                     "PROXY_SCU_PORT", "PROXY_RAW_PORT")


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=300, help="slices of the compared series")
    p.add_argument("--links", default="100:10 1000:10 100:40", help="RATE_MBIT:ONE_WAY_MS ...")
    p.add_argument("--skip-orthanc", action="store_true", help="medfed only (no speed-up column)")
    p.add_argument("--rss-gb", type=float, default=1.0, help="series size for the RSS run; 0 skips it")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    # 5, not 3: at 1 Gbit/s single owner-down fetches vary by up to ~35 % between runs on a
    # quiet machine (0.48 -> 0.65 s), and the row that got two slow ones of three moved
    # from run to run (bench/RESULTS.md, "wan")
    p.add_argument("--repeat", type=int, default=5,
                   help="fetches per medfed row; the table shows the median (all of them listed)")
    return p.parse_args(argv)


def _log(text: str) -> None:
    print(f"[bench.wan] {text}", flush=True)


def run_orthanc(series: Path, links: list[Link], work: Path) -> dict[tuple[float, float], OrthancLink]:
    out_json = work / "orthanc.json"
    env = dict(os.environ, SERIES_DIR=str(series), LINKS=" ".join(l.spec for l in links),
               OUT_JSON=str(out_json), NO_INSTALL="1", PYTHON=sys.executable)
    env.update({var: str(free_port()) for var in ORTHANC_PORT_VARS})
    with (work / "orthanc.log").open("wb") as log:
        done = subprocess.run(["bash", str(SHARED_BENCH / "orthanc_wan_baseline.sh")], env=env,
                              stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False)
    if done.returncode != 0 or not out_json.exists():
        tail = (work / "orthanc.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"orthanc_wan_baseline.sh failed (exit {done.returncode}):\n{tail}")
    return load_orthanc_json(out_json.read_text())


async def _fetch_once(fed: WanFederation, req: RequesterProcess, requester: int, pub: Published,
                      link: Link | None, out: Path, *, mode: str = COLD) -> Fetched:
    async with fed.links(requester, link):
        got = await req.fetch(pub.owner_id, pub.bundle_id, pub.instances, out, mode=mode)
    if got.files != pub.instances or got.instances != pub.instances:
        raise RuntimeError(f"fetched {got.files} files / {got.instances} instances of {pub.instances}")
    _log(f"  {link.label if link else 'loopback, no proxy'}, {mode}: "
         f"{got.seconds:.2f} s from {got.source[:20]} (bytes to the decoder {got.first_byte_s:.2f}-"
         f"{got.last_byte_s:.2f} s, tail {got.seconds - got.last_byte_s:.3f} s)"
         + (f" (tried: {'; '.join(got.attempts)[:120]})" if got.attempts else ""))
    return got


async def _row(fed: WanFederation, req: RequesterProcess, requester: int, pub: Published,
               link: Link | None, out: Path, repeat: int, *, mode: str = COLD) -> list[float]:
    """``repeat`` fetches of one row (the machine is shared: one sample says little)."""
    return [(await _fetch_once(fed, req, requester, pub, link, out, mode=mode)).seconds
            for _ in range(max(1, repeat))]


async def _rss(fed: WanFederation, req: RequesterProcess, requester: int, gb: float
               ) -> tuple[Fetched, Published]:
    slices = max(1, round(gb * 1e9 / SLICE_BYTES))
    _log(f"RSS: ingesting and publishing a {slices}-slice series (~{slices * SLICE_BYTES / 1e9:.2f} GB)")
    t0 = time.perf_counter()
    datasets = iter_datasets(patients=1, studies=1, series=1, slices=slices, rows=512, cols=512,
                             seed=2, patient_offset=1)
    big = await publish(fed, datasets)
    _log(f"RSS: published in {time.perf_counter() - t0:.0f} s; fetching the "
         f"{big.bundle_bytes / 1e6:.0f} MB bundle from the owner on loopback")
    got = await _fetch_once(fed, req, requester, big, None, fed.base / "rss-out")
    return got, big


async def run_medfed(series_files: list[Path], links: list[Link], work: Path, rss_gb: float, repeat: int = 1
                     ) -> tuple[Published, list[tuple[Link | None, str, list[float]]], Fetched | None, Published | None]:
    fed = await start_wan_federation(work / "fed")
    times: list[tuple[Link | None, str, list[float]]] = []
    rss = big = None
    req: RequesterProcess | None = None
    try:
        t0 = time.perf_counter()
        pub = await publish(fed, read_files(series_files))
        _log(f"published {pub.instances} instances as a {pub.bundle_bytes / 1e6:.1f} MB bundle "
             f"in {time.perf_counter() - t0:.1f} s")
        requester = pick_requester(fed, pub)
        await fed.stop_node(requester)     # from now on it runs in its own process
        m = fed.members[requester]
        req = RequesterProcess(ChildArgs(str(fed.base), m.name, requester, fed.server_ports[requester]),
                               work / "requester.log")
        async with fed.links(requester, None):
            await req.start()
        out = work / "out"
        _log(f"owner path (requester {m.name}, own process)")
        times.append((None, f"owner, {COLD}", await _row(fed, req, requester, pub, None, out, repeat)))
        for link in links:
            for mode in MODES:
                times.append((link, f"owner, {mode}",
                              await _row(fed, req, requester, pub, link, out, repeat, mode=mode)))
        await fed.stop_node(0)
        _log("owner down: replica + key shares")
        for link in links:
            for mode in MODES:
                times.append((link, f"owner down, {mode}",
                              await _row(fed, req, requester, pub, link, out, repeat, mode=mode)))
        # Last, after every timed row: the RSS series leaves ~3 GB of page cache (ingest,
        # bundle, replica) that the VM's DAMON pageout evicts 1-2 min later, and pages
        # handed back to the host fault in again on first use. While that ran (2026-12-07,
        # bench.wan with --rss-gb 1 between the rows), the rows timed in it were 1.3-1.9x
        # the link limit, their writes of fetched files into the page cache 28 % of the
        # requester's CPU samples instead of 2 %.
        if rss_gb > 0:
            await fed.restart_node(0, requester)
            rss, big = await _rss(fed, req, requester, rss_gb)
            _log(f"RSS: peak {rss.peak_rss_mb:.0f} MB (before the fetch {rss.start_rss_mb:.0f} MB), "
                 f"{rss.instances} instances in {rss.seconds:.1f} s")
    finally:
        if req is not None:
            await req.stop()
        await fed.stop()
    return pub, times, rss, big


def _report(pub: Published, times: list[tuple[Link | None, str, list[float]]],
            orthanc: dict[tuple[float, float], OrthancLink] | None, rss: Fetched | None,
            big: Published | None, slices: int, elapsed: float) -> str:
    rows = [Row(link, path, statistics.median(s), pub.bundle_bytes,
                None if orthanc is None else getattr(orthanc.get((link.rate_mbit, link.rtt_ms)), "cget_s", None),
                new_connection=path.endswith(COLD))
            for link, path, s in times if link is not None]
    loop = next((statistics.median(s) for link, path, s in times if link is None), None)
    repeat = max(len(s) for _, _, s in times)
    lines = [stamp(),
             f"- series: {slices} slices 512x512 CT (node.synth), {pub.instances} instances; medfed bundle "
             f"{pub.bundle_bytes / 1e6:.1f} MB (zstd + XChaCha20); 7 nodes, key shares 2-of-3, 1 replica",
             f"- every medfed row: the median of {repeat} fetches in a row (all listed below the table)",
             "- medfed time = wall clock of `Retriever.fetch` in the requester's own process (a real `Node`: "
             "peer client, keeper, keyshare and replica services), into a DICOM folder: "
             "connect if needed, request, decrypt, decompress, write files. Every node but the requester "
             "sits behind one `wan_proxy.py` (shared token bucket); the DHT (UDP) is not proxied",
             "- what the requester is before the clock starts (`bench.wan_fed.prepare`): "
             "**cold process** = no connection open, nothing remembered about who is down, keeper stopped, "
             "new connections first-flight (`node.net.firstflight`; a process that starts and fetches at "
             "once, like `medfed fetch` with no node running); "
             f"**running node** = a `medfed run`-style node: its keeper (`node.net.keeper`) started afresh "
             f"on an empty pool, its first dial to every member done (answered, or failed for a member that "
             f"is down), then {RUNNING_IDLE_S:g} s idle; no query made; "
             "**warm pool** = keeper stopped, but one signed GET /v1/roster sent to every member just before, "
             "as right after the federated query that found the series",
             "- link limit = bundle bytes / rate + RTT. A cold process cannot reach it: the TCP handshake, "
             "then the request inside the first-flight handshake take 2 RTT before the first byte "
             "(new-connection floor = bytes / rate + 2 RTT, 1.043x the limit at 1 Gbit/s / 20 ms; over "
             "TLS 1.3 it was 3 RTT, 1.085x; column \"medfed / new-connection floor\", cold rows only). "
             "With the owner down, a cold process learns so when the emulated connect fails (1.5 RTT) "
             "and asks the replica path then, over connections dialled meanwhile (`node.sharing.hedge`): "
             "2.5 RTT, 1.064x. Running node and warm pool: the connections "
             "are open, so 1 RTT (floor = the limit). The emulator forwards over loopback TCP, so it models "
             "no TCP slow start, on new or on idle connections alike",
             ""] + table(rows)
    lines += ["", "All fetches (s): " + "; ".join(
        f"{link.label if link else 'loopback'} {path}: {' '.join(f'{x:.2f}' for x in s)}" for link, path, s in times)]
    if loop is not None:
        lines += ["", f"Owner path on loopback without the proxy (CPU-bound floor): {loop:.2f} s "
                      f"({pub.bundle_bytes / 1e6 / loop:.0f} MB/s of bundle)."]
    if orthanc:
        lines += ["", "Orthanc reference (same run, same files): "
                  + "; ".join(f"{r:g} Mbit/s {rtt:g} ms: C-GET {o.cget_s:.2f} s, zstd-3 stream {o.rawz_s:.2f} s, "
                              f"raw stream {o.raw_s:.2f} s" for (r, rtt), o in sorted(orthanc.items()))]
    if rss is not None and big is not None:
        ok = "yes" if rss.peak_rss_mb < RSS_TARGET_MB else "**no**"
        lines += ["", f"Peak RSS of the requester process fetching {big.instances} instances "
                      f"({rss.plain_bytes / 1e9:.2f} GB DICOM, {big.bundle_bytes / 1e6:.0f} MB bundle) from the "
                      f"owner on loopback into a DICOM folder: **{rss.peak_rss_mb:.0f} MB** (just before the "
                      f"fetch {rss.start_rss_mb:.0f} MB; sampled every 50 ms; fetch {rss.seconds:.1f} s). "
                      f"Target < {RSS_TARGET_MB:.0f} MB: {ok}."]
    lines += ["", f"`python -m bench.wan` took {elapsed:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _args(argv)
    started = time.perf_counter()
    links = parse_links(args.links)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-wan-"))
    work.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(work).free / 1e9
    need_gb = 1.0 + 4 * args.rss_gb
    if free_gb < need_gb:
        print(f"bench.wan: {free_gb:.1f} GB free under {work}, needs ~{need_gb:.0f} GB", file=sys.stderr)
        return 1
    try:
        _log(f"generating {args.slices}-slice 512x512 CT series")
        series = sorted(generate(work / "series", patients=1, studies=1, series=1, slices=args.slices,
                                 rows=512, cols=512, seed=1).files)
        orthanc = None
        if not args.skip_orthanc:
            _log("Orthanc C-GET over the same links (orthanc_wan_baseline.sh, ~4 min)")
            orthanc = run_orthanc(work / "series", links, work)
            _log("Orthanc: " + json.dumps({f"{k[0]:g}/{k[1]:g}": v.cget_s for k, v in orthanc.items()}))
        pub, times, rss, big = asyncio.run(run_medfed(series, links, work, args.rss_gb, args.repeat))
        body = _report(pub, times, orthanc, rss, big, args.slices, time.perf_counter() - started)
        print(body)
        write_section(SECTION, body)
    except (RuntimeError, OSError) as exc:
        print(f"bench.wan failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
