"""Five hospitals, five `medfed run` processes, set up ONLY through the CLI as the README's
"Deploying across hospitals" section says, admitted in a shuffled order.

Checked: every site's query lists every member and every site's DHT holds every other
member; a site that moves to new ports by re-admission is reached at them (peer API and
DHT); owner-down retrieval with the default protection at three sites and again at
five; a revocation handed to one member reaches every other site, which then lists the
site as revoked, leaves it out of queries and drops it from its DHT, and the revoked
site says it is revoked.

Nothing here depends on host speed: every wait polls the observable state (a file the
node writes, or `medfed status`) until it holds, with a generous deadline, and never
sleeps a fixed time before asserting. The sites' own setup (init, admission request,
users) runs in parallel; the operator admits them one at a time in the shuffled order.
Each node's stdout and stderr go to files (a pipe nobody reads fills up and stalls the
node). Gossip rounds are set short in each site's TOML (``[federation]
roster_pull_interval_s``) so a missed push is repaired in seconds, not 10 s rounds.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cli.node_process import NodeProcess
from tests.dicom_tools import dcmtk, free_port

DEADLINE_S = 300.0          # per wait; generous: other helpers' suites may load the machine
PASSWORD = "a long enough password"
NAMES = ["north", "south", "east", "west", "central"]


def medfed(*args: object, stdin: str | None = None, env: dict[str, str] | None = None,
           timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, input=stdin,
                          env=dict(os.environ, COLUMNS="300", **(env or {})))


def free_udp_port() -> int:
    """A port free for UDP on loopback right now (the DHT's; free_port checks TCP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def wait_for(check: Callable[[], Any], what: str, *, pause_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (``pause_s`` between polls: a
    poll that runs a CLI command takes its own time, a file read does not)."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            print(f"{time.strftime('%H:%M:%S')} {time.monotonic() - start:6.1f} s  {what}", flush=True)
            return value
        if time.monotonic() - start > DEADLINE_S:
            raise AssertionError(f"not within {DEADLINE_S:.0f} s: {what}")
        time.sleep(pause_s)


@dataclass
class Site:
    name: str
    folder: Path
    dicom_port: int
    peer_port: int
    node_id: str = ""
    token: str = ""
    addresses: list[str] = field(default_factory=list)
    node: NodeProcess = field(init=False)

    def __post_init__(self) -> None:
        self.node = NodeProcess(self.config, self.name)

    @property
    def config(self) -> Path:
        return self.folder / "medfed.toml"

    @property
    def peer(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    def cli(self, *args: object, **kw: Any) -> subprocess.CompletedProcess[str]:
        return medfed(*args, "--config", self.config, **kw)

    def as_user(self, *args: object) -> subprocess.CompletedProcess[str]:
        return medfed(*args, "--config", self.config, env={"MEDFED_TOKEN": self.token})

    def start(self) -> None:
        """`medfed run`; returns once it printed its last address line (all listen)."""
        self.addresses = self.node.start()

    def stop(self) -> None:
        self.node.stop()

    def status(self) -> dict[str, Any] | None:
        """The running node's federation status (None while it does not answer live)."""
        doc = json.loads(ok(self.cli("status", "--json")).stdout)
        return doc["federation"] if doc["live"] else None

    def live_status(self) -> dict[str, Any]:
        return wait_for(self.status, f"{self.name} answers `medfed status`", pause_s=0)

    def query(self, *extra: str) -> dict[str, Any]:
        return json.loads(ok(self.as_user("query", "--all", "--json", *extra)).stdout)

    def members(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in self.live_status()["roster"]["members"]}


class Operator:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        made = ok(medfed("federation", "create", folder, "--name", "Regional Imaging Network"))
        self.fingerprint = made.stdout.split("CA fingerprint")[1].split()[0]

    def run(self, *args: object) -> subprocess.CompletedProcess[str]:
        return medfed("federation", *args, "--dir", self.folder)

    def roster_version(self) -> int:
        return json.loads((self.folder / "roster.json").read_text())["roster"]["version"]


def prepare(site: Site, work: Path) -> Path:
    """The site's own steps before the operator (README step 2), and its users."""
    made = ok(medfed("init", site.folder, "--name", site.name, "--ae-title", site.name.upper(),
                     "--host", "127.0.0.1", "--advertise", "127.0.0.1",
                     "--dicom-port", site.dicom_port, "--peer-port", site.peer_port,
                     "--dht-port", free_udp_port(), "--http-port", free_port(),
                     "--allow", "STORESCU@127.0.0.1"))
    site.node_id = made.stdout.split("node id")[1].split()[0]
    text = site.config.read_text()          # the IT team's edit: short rounds for the test
    text = text.replace("repair_interval_s = 300",
                        "repair_interval_s = 300\nroster_pull_interval_s = 1.0")
    site.config.write_text(text.replace("series_idle_s = 30", "series_idle_s = 1"))
    request = work / f"{site.name}-request.json"
    ok(site.cli("join", "--request", request))
    ok(site.cli("user", "add", "dr." + site.name, "--role", "clinician", "--department",
                "radiology", "--password-stdin", stdin=PASSWORD + "\n"))
    return request


def install_and_run(site: Site, operator: Operator, bundle: Path) -> None:
    """README step 4: install the bundle with the fingerprint, log in, `medfed run`."""
    joined = ok(site.cli("join", "--bundle", bundle, "--ca-fingerprint", operator.fingerprint))
    assert "joined" in joined.stdout and "failed" not in joined.stdout + joined.stderr
    site.token = ok(site.cli("user", "login", "dr." + site.name, "--print", "--password-stdin",
                             stdin=PASSWORD + "\n")).stdout.strip()
    site.start()


def admit_all(sites: list[Site], requests: dict[str, Future[Path]], operator: Operator,
              work: Path, pool: ThreadPoolExecutor) -> None:
    """The operator admits the sites one by one in this order (README step 3); each site
    installs its bundle and starts as soon as it has it, while the next is admitted."""
    running = []
    for site in sites:
        bundle = work / f"{site.name}-bundle.json"
        ok(operator.run("admit", requests[site.name].result(), "--out", bundle))
        running.append(pool.submit(install_and_run, site, operator, bundle))
    for started in running:
        started.result()


def readmit(site: Site, operator: Operator, work: Path) -> int:
    """The README's address change (the site is stopped): new ports in the TOML, a new
    admission request, the operator's bundle installed; returns the new DHT port."""
    dht_port, site.peer_port = free_udp_port(), free_port()
    text = site.config.read_text()
    head, peer_rest = text.split("[peer]", 1)
    peer, dht_rest = peer_rest.split("[dht]", 1)
    dht, tail = dht_rest.split("[ingest]", 1)
    peer = "\n".join(f"port = {site.peer_port}" if line.startswith("port =") else line
                     for line in peer.split("\n"))
    dht = "\n".join(f"port = {dht_port}" if line.startswith("port =") else line
                    for line in dht.split("\n"))
    site.config.write_text(f"{head}[peer]{peer}[dht]{dht}[ingest]{tail}")
    request, bundle = work / f"{site.name}-moved.json", work / f"{site.name}-moved-bundle.json"
    asked = ok(site.cli("join", "--request", request))
    assert f"peer 127.0.0.1:{site.peer_port}" in " ".join(asked.stdout.split())
    ok(operator.run("admit", request, "--out", bundle))
    ok(site.cli("join", "--bundle", bundle, "--ca-fingerprint", operator.fingerprint))
    return dht_port


def roster_version(site: Site) -> int:
    """The roster version the site holds (the node persists every roster it adopts)."""
    path = site.folder / "data" / "federation" / "roster.json"
    return int(json.loads(path.read_text())["roster"]["version"])


def converged(sites: list[Site], version: int) -> bool:
    return all(roster_version(s) >= version for s in sites)


def in_dht(members: dict[str, dict[str, Any]]) -> set[str]:
    """The members a site's DHT routing table holds (from its live status)."""
    return {n for n, m in members.items() if m["in_dht"]}


def store_series(site: Site, work: Path, seed: int) -> None:
    images = work / f"images-{site.name}-{seed}"
    ok(medfed("synth", images, "--patients", 1, "--series", 1, "--slices", 3, "--size", 32,
              "--seed", seed))
    dcmtk("storescu", "-aet", "STORESCU", "-aec", site.name.upper(), "+sd", "+r",
          "127.0.0.1", site.dicom_port, images, check=True, timeout=DEADLINE_S)


def published(site: Site, count: int) -> bool:
    doc = site.live_status()
    return doc["bundles"]["published"] >= count and doc["publish"]["pending"] == 0


def series_ref(asker: Site, owner: Site) -> str:
    """The REF `medfed fetch` takes, read from `medfed query --level series` as printed."""
    listed = ok(asker.as_user("query", "--all", "--level", "series")).stdout
    refs = [word for line in listed.splitlines() for word in line.split()
            if word.startswith(owner.node_id + ":")]
    assert refs, listed
    return refs[0]


def fetch_with_owner_down(owner: Site, asker: Site, work: Path, tag: str) -> None:
    ref = series_ref(asker, owner)
    owner.stop()
    out = work / f"fetched-{tag}"
    fetched = ok(asker.as_user("fetch", ref, "--out", out))
    assert "fetched 3 instances" in fetched.stdout and "replica" in fetched.stdout
    assert len(list(out.rglob("*.dcm"))) == 3


def fetch_without_a_running_node(owner: Site, asker: Site, work: Path) -> None:
    """`medfed fetch` at a site whose node is stopped: a process of its own, whose new
    connections carry their request in the handshake; the owner counts one of those. Then
    the same with the owner stopped too: replica + key shares, over first-flight as well."""
    ref = series_ref(asker, owner)
    before = owner.live_status()["peer_connections"]
    asker.stop()
    out = work / "fetched-standalone"
    fetched = ok(asker.as_user("fetch", ref, "--out", out))
    assert "fetched 3 instances" in fetched.stdout and "owner" in fetched.stdout, fetched.stdout
    assert len(list(out.rglob("*.dcm"))) == 3
    after = owner.live_status()["peer_connections"]
    assert after["first_flight"] > before["first_flight"], (before, after)
    owner.stop()
    out = work / "fetched-standalone-owner-down"
    fetched = ok(asker.as_user("fetch", ref, "--out", out))
    assert "fetched 3 instances" in fetched.stdout and "replica" in fetched.stdout, fetched.stdout
    assert len(list(out.rglob("*.dcm"))) == 3
    owner.start()
    asker.start()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[list[Site]]:
    made = [Site(name, tmp_path / name, free_port(), free_port()) for name in NAMES]
    yield made
    for site in made:
        site.stop()


def test_five_hospitals_set_up_only_through_the_cli(tmp_path: Path, sites: list[Site]) -> None:
    operator = Operator(tmp_path / "operator")
    order = sites[:]
    random.Random(20261202).shuffle(order)
    pool = ThreadPoolExecutor(max_workers=len(sites))
    try:
        requests = {s.name: pool.submit(prepare, s, tmp_path) for s in order}

        # -- three sites, admitted in shuffled order, each running as soon as it joined ------
        admit_all(order[:3], requests, operator, tmp_path, pool)
        first = order[0]
        assert any(line.startswith("peer API   127.0.0.1:" + str(first.peer_port))
                   for line in first.addresses), first.addresses
        wait_for(lambda: converged(order[:3], operator.roster_version()),
                 "3 sites share the roster")
        three = first.live_status()
        assert "federation too small" in three["protection"]["warning"]
        assert (three["protection"]["k"], three["protection"]["n"]) == (2, 2)

        store_series(first, tmp_path, seed=1)
        wait_for(lambda: published(first, 1), "the first series is published with 3 members",
                 pause_s=0)
        fetch_with_owner_down(first, order[1], tmp_path, "at-3")
        moved_dht = readmit(first, operator, tmp_path)      # while it is down: new ports
        back = pool.submit(first.start)   # back while the other two are admitted

        # -- two more sites; every site's query and DHT list all five ----------------------
        admit_all(order[3:], requests, operator, tmp_path, pool)
        back.result()
        wait_for(lambda: converged(sites, operator.roster_version()), "5 sites share the roster")
        for site in sites:
            answer = site.query()
            assert sorted(s["site"] for s in answer["sites"]) == sorted(NAMES), (site.name, answer)
            assert all(s["status"] == "ok" for s in answer["sites"]), answer["sites"]
            wait_for(lambda: in_dht(site.members()) == set(NAMES) - {site.name},
                     f"{site.name}'s DHT holds every other member", pause_s=0)
        # roster gossip picks its peers at random and backs off while quiet: every
        # member is heard from in time, not necessarily by the moment the DHTs agree
        def heard_from_all() -> dict[str, Any] | None:
            seen = order[1].members()
            return seen if all(seen[n]["last_contact"] > 0 for n in NAMES
                               if n != order[1].name) else None

        members = wait_for(heard_from_all, f"{order[1].name} has heard from every member",
                           pause_s=0)
        assert members[first.name]["peer_address"] == first.peer          # the new address
        for site in sites:                  # the DHTs contact the moved site at its new port
            if site is not first:
                wait_for(lambda: site.members()[first.name]["dht_contact"]
                         == f"127.0.0.1:{moved_dht}", f"{site.name} dials the moved DHT port",
                         pause_s=0)

        # -- at five sites the owner's bundle is re-shared to the full default 3-of-4 --------
        wait_for(lambda: first.live_status()["bundles"]["shares_below_target"] == 0,
                 "the bundle is re-shared as the federation grew", pause_s=0)
        assert first.live_status()["protection"]["warning"].startswith("federation too small")
        owner = order[4]
        store_series(owner, tmp_path, seed=2)
        wait_for(lambda: published(owner, 1), "a series is published with 5 members", pause_s=0)
        fetch_without_a_running_node(owner, order[3], tmp_path)
        fetch_with_owner_down(owner, order[2], tmp_path, "at-5")

        # -- revocation handed to one member reaches every other site; the owner, still
        #    down, catches up when it starts again ------------------------------------------
        revoked, entry = order[2], order[3]
        ok(operator.run("revoke", revoked.node_id, "--to", entry.peer))
        version = operator.roster_version()
        running = [s for s in sites if s is not revoked and s is not owner]
        wait_for(lambda: converged(running, version), "every running site holds the roster")
        owner.start()
        others = [s for s in sites if s is not revoked]
        wait_for(lambda: converged(others, version), "the site that was down catches up")
        for site in others:
            assert revoked.name not in [s["site"] for s in site.query()["sites"]]
            expected = {s.name for s in others} - {site.name}
            members = wait_for(lambda: m if in_dht(m := site.members()) == expected else None,
                               f"{site.name}'s DHT drops the revoked site", pause_s=0)
            assert members[revoked.name]["status"] == "revoked"
        wait_for(lambda: revoked.live_status()["roster"]["revoked_here"],
                 "the revoked site learns it", pause_s=0)
        refused = revoked.as_user("query", "--all", "--json")
        assert refused.returncode == 1 and "revoked" in refused.stderr
        assert "REVOKED" in ok(revoked.cli("status")).stdout
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
