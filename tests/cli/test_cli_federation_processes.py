"""Five hospitals, five `medfed run` processes, set up ONLY through the CLI as the README's
"Deploying across hospitals" section says, joining in a shuffled order.

Checked: every site's query lists every member; owner-down retrieval with the default
protection at three sites and again at five; a revocation handed to one member is
refused by every other site and the revoked site says it is revoked. Gossip intervals
are set short in each site's TOML (``[federation] roster_pull_interval_s``) so nothing
waits for the production 10 s rounds; every wait is event-driven with a generous deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.dicom_tools import dcmtk, free_port

DEADLINE_S = 240.0          # generous: other helpers' suites may load the machine
PASSWORD = "a long enough password"
NAMES = ["north", "south", "east", "west", "central"]


def medfed(*args: object, stdin: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
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


def wait_for(check: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``check`` (each poll is a real CLI call) until it returns something truthy."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"not within {deadline_s:.0f} s: {what}")
        time.sleep(1.0)


@dataclass
class Site:
    name: str
    folder: Path
    dicom_port: int
    peer_port: int
    node_id: str = ""
    token: str = ""
    proc: subprocess.Popen[str] | None = None
    addresses: list[str] = field(default_factory=list)

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
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--config",
                                      str(self.config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, COLUMNS="300"))
        assert self.proc.stdout is not None
        lines: list[str] = []
        for line in self.proc.stdout:           # `run` prints once everything listens
            lines.append(line.strip())
            if line.strip().startswith("control"):  # the last address line
                self.addresses = lines
                return
        raise AssertionError(f"{self.name} did not start: {self.proc.communicate(timeout=30)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=60)
        self.proc = None

    def status(self) -> dict[str, Any]:
        return json.loads(ok(self.cli("status", "--json")).stdout)["federation"]

    def query(self, *extra: str) -> dict[str, Any]:
        return json.loads(ok(self.as_user("query", "--all", "--json", *extra)).stdout)


class Operator:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        made = ok(medfed("federation", "create", folder, "--name", "Regional Imaging Network"))
        self.fingerprint = made.stdout.split("CA fingerprint")[1].split()[0]

    def run(self, *args: object) -> subprocess.CompletedProcess[str]:
        return medfed("federation", *args, "--dir", self.folder)

    def roster_version(self) -> int:
        return json.loads((self.folder / "roster.json").read_text())["roster"]["version"]


def join(site: Site, operator: Operator, work: Path) -> None:
    """The README's steps for one hospital, in order (operator steps in between)."""
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
    request, bundle = work / f"{site.name}-request.json", work / f"{site.name}-bundle.json"
    ok(site.cli("join", "--request", request))
    ok(operator.run("admit", request, "--out", bundle))
    joined = ok(site.cli("join", "--bundle", bundle, "--ca-fingerprint", operator.fingerprint))
    assert "joined" in joined.stdout and "failed" not in joined.stdout + joined.stderr
    ok(site.cli("user", "add", "dr." + site.name, "--role", "clinician", "--department",
                "radiology", "--password-stdin", stdin=PASSWORD + "\n"))
    site.token = ok(site.cli("user", "login", "dr." + site.name, "--print", "--password-stdin",
                             stdin=PASSWORD + "\n")).stdout.strip()
    site.start()


def roster_version(site: Site) -> int:
    """The roster version the site holds (the node persists every roster it adopts)."""
    path = site.folder / "data" / "federation" / "roster.json"
    return int(json.loads(path.read_text())["roster"]["version"])


def converged(sites: list[Site], version: int) -> bool:
    return all(roster_version(s) >= version for s in sites)


def store_series(site: Site, work: Path, seed: int) -> None:
    images = work / f"images-{site.name}-{seed}"
    ok(medfed("synth", images, "--patients", 1, "--series", 1, "--slices", 3, "--size", 32,
              "--seed", seed))
    dcmtk("storescu", "-aet", "STORESCU", "-aec", site.name.upper(), "+sd", "+r",
          "127.0.0.1", site.dicom_port, images, check=True)


def published(site: Site, count: int) -> bool:
    doc = site.status()
    bundles = doc.get("bundles") or {}
    return bundles.get("published", 0) >= count and doc["publish"]["pending"] == 0


def series_ref(asker: Site, owner: Site) -> str:
    answer = asker.query("--level", "series")
    rows = [r for p in answer["patients"] for r in p["records"]
            if owner.name in r["sites"] and "series_uid" in r]
    assert rows, answer
    return f"{owner.node_id}:{rows[0]['series_uid']}"


def fetch_with_owner_down(owner: Site, asker: Site, work: Path, tag: str) -> None:
    ref = series_ref(asker, owner)
    owner.stop()
    out = work / f"fetched-{tag}"
    fetched = ok(asker.as_user("fetch", ref, "--out", out))
    assert "fetched 3 instances" in fetched.stdout and "replica" in fetched.stdout
    assert len(list(out.rglob("*.dcm"))) == 3
    owner.start()


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

    # -- three sites, in shuffled order, each running right after it joined -------------
    for site in order[:3]:
        join(site, operator, tmp_path)
    first = order[0]
    assert any(line.startswith("peer API   127.0.0.1:" + str(first.peer_port))
               for line in first.addresses), first.addresses
    wait_for(lambda: converged(order[:3], operator.roster_version()), "3 sites share the roster")
    three = first.status()
    assert "federation too small" in three["protection"]["warning"]
    assert (three["protection"]["k"], three["protection"]["n"]) == (2, 2)

    store_series(first, tmp_path, seed=1)
    wait_for(lambda: published(first, 1), "the first series is published with 3 members")
    fetch_with_owner_down(first, order[1], tmp_path, "at-3")

    # -- two more sites; every site's query lists all five ---------------------------------
    for site in order[3:]:
        join(site, operator, tmp_path)
    wait_for(lambda: converged(sites, operator.roster_version()), "5 sites share the roster")
    for site in sites:
        answer = site.query()
        assert sorted(s["site"] for s in answer["sites"]) == sorted(NAMES), (site.name, answer)
        assert all(s["status"] == "ok" for s in answer["sites"]), answer["sites"]
    members = {m["name"]: m for m in order[1].status()["roster"]["members"]}
    assert all(members[n]["last_contact"] > 0 for n in NAMES if n != order[1].name)

    # -- at five sites the owner's bundle is re-shared to the full default 3-of-4 ----------
    wait_for(lambda: first.status()["bundles"]["shares_below_target"] == 0,
             "the bundle is re-shared as the federation grew")
    assert first.status()["protection"]["warning"].startswith("federation too small")  # n=4 < 5
    store_series(order[4], tmp_path, seed=2)
    wait_for(lambda: published(order[4], 1), "a series is published with 5 members")
    fetch_with_owner_down(order[4], order[2], tmp_path, "at-5")

    # -- revocation handed to one member reaches every other site ---------------------------
    revoked, entry = order[2], order[3]
    ok(operator.run("revoke", revoked.node_id, "--to", entry.peer))
    version = operator.roster_version()
    others = [s for s in sites if s is not revoked]
    wait_for(lambda: converged(others, version), "every other site holds the revoking roster")
    for site in others:
        states = {m["name"]: m["status"] for m in site.status()["roster"]["members"]}
        assert states[revoked.name] == "revoked"
        assert revoked.name not in [s["site"] for s in site.query()["sites"]]
    wait_for(lambda: revoked.status()["roster"]["revoked_here"], "the revoked site learns it")
    refused = revoked.as_user("query", "--all", "--json")
    assert refused.returncode == 1 and "revoked" in refused.stderr
    assert "REVOKED" in ok(revoked.cli("status")).stdout
