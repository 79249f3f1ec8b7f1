"""The federation half of `medfed demo`: five hospitals on loopback, one query across
all of them, and a retrieval that still works when the owning hospital is down."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel
from rich.console import Console
from rich.table import Table

from ..audit.verify import verify
from ..testing.users import local_user
from ..users import user_assertion
from ..query.model import FederatedQuery
from ..services import federated_services
from ..sharing.retrieve import Retriever
from ..sharing.sinks import sink_for
from ..testing.federation import start_federation
from ..web.service import WebService
from ..testing.web_federation import demo_settings, load_demo_site, publish_all

DEMO_USER = "dr.demo"
SITES = ["st-mary", "city-general", "north-clinic", "lakeside", "university"]
console = Console()


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}", align="left")


async def run_federation_demo(base: Path, first_step: int, *, ports: DemoPorts | None = None,
                              wait: bool = False) -> None:
    n = first_step
    ports = ports or DemoPorts()
    _step(n, f"Create a federation CA and admit {len(SITES)} hospitals (mTLS, signed roster)")
    web = WebService()
    fed = await start_federation(
        base / "federation", SITES, configure=lambda cfg: _with_web_port(demo_settings(cfg), ports),
        services=lambda i, name: federated_services() + ([web] if i == 0 else []),
        peer_ports=ports.peers(len(SITES)))
    try:
        for node in fed.nodes:
            console.print(f"  {node.cfg.name:13} node {node.node_id[:12]}…  peer "
                          f"127.0.0.1:{node.ports.peer}  dht udp/{node.ports.dht}")
        password = secrets.token_urlsafe(9)
        fed.nodes[0].users.add_user(DEMO_USER, "clinician", "radiology", password)
        _print_web(web, password)

        _step(n + 1, "Each hospital stores its own CT studies (patients 1-2 at three of them)")
        raw = 0
        for i, node in enumerate(fed.nodes):
            await load_demo_site(node, i)
            raw += (await node.store.counts()).bytes
        counts = [await node.store.counts() for node in fed.nodes]
        console.print(f"  {sum(c.instances for c in counts)} instances, "
                      f"{sum(c.series for c in counts)} series, {raw / 1e6:.1f} MB, all PHI local")

        _step(n + 2, "Publish: de-identify, bundle (zstd + XChaCha20), split keys 2-of-3, 2 replicas")
        t0 = time.perf_counter()
        for node in fed.nodes:
            await publish_all(node)
        stored = 0
        for node in fed.nodes:
            for bundle in (node.cfg.data_dir / "bundles").glob("*.mfb"):
                stored += bundle.stat().st_size
        console.print(f"  {sum(c.series for c in counts)} series published in "
                      f"{time.perf_counter() - t0:.1f} s; bundles are {stored / raw:.0%} of the "
                      "DICOM bytes; no site holds a key it can use alone")

        for node in fed.nodes:  # index entries (keyed hashes, coarse counts) into the DHT
            await node.service("index-publisher").sync_now()  # type: ignore[union-attr]

        home = fed.nodes[0]
        query_svc = home.service("federated-query")
        doctor = local_user(home, DEMO_USER)
        _step(n + 3, f"A clinician at {home.cfg.name} asks once: CT series, all sites")
        answer = await query_svc.query(  # type: ignore[union-attr]
            FederatedQuery(modality="CT", level="series"), user=doctor, purpose="treatment")
        _print_answer(answer)

        _step(n + 4, "One patient, by MRN at the home site: the DHT index narrows the sites asked")
        row = await home.store.fetchone("SELECT pid FROM patient_phi ORDER BY patient_id LIMIT 1")
        one = await query_svc.query(  # type: ignore[union-attr]
            FederatedQuery(patient_id=str(row[0]), level="study"), user=doctor, purpose="treatment")
        console.print(f"  planned {one.plan.mode}: asked {len(one.plan.sites)} of {len(SITES)} "
                      f"sites ({one.plan.skipped} skipped); the MRN never left {home.cfg.name}, "
                      f"only its keyed pseudonym; {sum(len(p.records) for p in one.patients)} "
                      f"studies at {', '.join(sorted({s for p in one.patients for s in p.sites}))}")

        _step(n + 5, "The same CT query with north-clinic down: the answer says who did not answer")
        down = SITES.index("north-clinic")
        await fed.nodes[down].stop()
        fed.down.add(down)
        answer2 = await query_svc.query(  # type: ignore[union-attr]
            FederatedQuery(modality="CT", level="series"), user=doctor, purpose="treatment")
        _print_answer(answer2, patients=False)

        _step(n + 6, "Retrieve a north-clinic series while north-clinic is down "
                     "(replica + 2 key shares, decrypted in memory) as a NIfTI volume")
        owner_id = fed.nodes[down].node_id
        series_ref = next(r["series_uid"] for p in answer.patients for r in p.records
                          if "north-clinic" in r.get("sites", []) and "series_uid" in r)
        assertion = user_assertion(home.identity, doctor, "treatment")
        out = base / "retrieved"
        t0 = time.perf_counter()
        result = await Retriever(home, deadline_s=30).fetch(
            _ref(owner_id, series_ref), assertion,
            lambda bundle_id: sink_for(out, bundle_id, "nifti"))
        img = nibabel.load(str(result.outputs[0]))
        console.print(f"  source {result.source.split(':')[0]} "
                      f"(owner down; tried: {', '.join(a.split(':')[0] for a in result.attempts) or '-'}), "
                      f"{result.instances} slices, {result.stored_bytes / 1e6:.2f} MB in "
                      f"{time.perf_counter() - t0:.2f} s")
        console.print(f"  volume {img.shape}, voxel {tuple(round(float(z), 2) for z in img.header.get_zooms())} mm "
                      f"-> {result.outputs[0].name}")

        _step(n + 7, "Every serving site audited what it answered (hash chain + signed head)")
        for i, node in enumerate(fed.nodes):
            if i in fed.down or node.audit is None:
                continue
            node.audit.sync()
            report = verify(node.cfg.audit_path, node.identity.verify_key)
            console.print(f"  {node.cfg.name:13} {report.entries:4} entries, intact: {report.ok}")
        if wait:
            await _serve_until_interrupted(web, password)
    finally:
        await fed.stop()


@dataclass(frozen=True)
class DemoPorts:
    """Where the demo listens: ephemeral ports, or ``base`` (web) and the ports after it."""

    base: int = 0

    def web(self) -> int:
        return self.base

    def peers(self, n: int) -> list[int] | None:
        return [self.base + 10 + i for i in range(n)] if self.base else None

    def offset(self, k: int) -> int:
        return self.base + k if self.base else 0


def _with_web_port(cfg, ports: DemoPorts):  # type: ignore[no-untyped-def]
    return dataclasses.replace(cfg, http_port=ports.web()) if cfg.name == SITES[0] else cfg


def _print_web(web: WebService, password: str) -> None:
    console.print(f"web: {web.url}", highlight=False)
    console.print(f"login: {DEMO_USER} {password}", highlight=False)


async def _dicomweb_status(web: WebService) -> int:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        async with client.get(web.url + "dicomweb/studies") as resp:
            return resp.status


async def _serve_until_interrupted(web: WebService, password: str) -> None:
    """Keep the federation up for a person at the browser until Ctrl-C (or SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.rule("[bold]The federation stays up for the web app", align="left")
    _print_web(web, password)
    console.print(f"  DICOMweb for OHIF and tools: {web.url}dicomweb/ "
                  f"(answers {await _dicomweb_status(web)} without a token). "
                  "north-clinic stays down, as in the last query. Press Ctrl-C to stop.")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _ref(owner_id: str, keyed_series_uid: str) -> object:
    from ..sharing.retrieve import parse_series_ref

    return parse_series_ref(f"{owner_id}:{keyed_series_uid}")


def _print_answer(answer, patients: bool = True) -> None:  # type: ignore[no-untyped-def]
    table = Table("site", "status", "answered as", "rows", "ms")
    for s in answer.sites:
        style = "green" if s.status == "ok" else "red"
        table.add_row(s.site, f"[{style}]{s.status}[/{style}]", s.level or "-", str(s.rows),
                      f"{s.latency_ms:.0f}")
    console.print(table)
    console.print(f"  planned {answer.plan.mode}, {len(answer.sites)} sites, "
                  f"{answer.elapsed_ms:.0f} ms")
    if patients:
        linked = [p for p in answer.patients if len(p.sites) > 1]
        console.print(f"  {len(answer.patients)} patients (pseudonymous); {len(linked)} seen at "
                      "several sites, e.g. " + ", ".join(
                          f"{p.pseudonym} at {len(p.sites)} sites" for p in linked[:2]))


def run(base: Path, first_step: int, *, ports: DemoPorts | None = None, wait: bool = False) -> None:
    asyncio.run(run_federation_demo(base, first_step, ports=ports, wait=wait))
