"""Similarity search across separate `medfed run` processes, set up only through the CLI.

Three hospitals are created, admitted and joined with `medfed` commands as the README
tells a site; images arrive by C-STORE (dcmtk storescu) as from a modality. Hospital C
holds a near-duplicate of hospital A's case. `medfed similar` at A (through its running
node's control socket) must rank it first; `medfed diagnose` records the conclusion and
`medfed provenance verify|export` check and export the whole derivation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom

from node.synth.duplicate import near_duplicate
from tests.dicom_tools import dcmtk, free_port

SITES = ("alpha", "bravo", "charlie")


PASSWORD = "correct horse battery"
ENV: dict[str, str] = {}


def medfed(*args: object, timeout: float = 120, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, input=stdin,
                          env={**os.environ, "COLUMNS": "200", **ENV})


def login(site: "Site", user: str, role: str) -> None:
    """A local user at the site, logged in for this test's CLI calls (token saved)."""
    ok(medfed("user", "add", user, "--role", role, "--department", "cardiology",
              "--password-stdin", "--config", site.cfg, stdin=PASSWORD + "\n"))
    ok(medfed("user", "login", user, "--password-stdin", "--config", site.cfg,
              stdin=PASSWORD + "\n"))


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


class Site:
    def __init__(self, root: Path, name: str, index: int) -> None:
        self.name, self.dir = name, root / name
        self.cfg = self.dir / "medfed.toml"
        self.dicom, self.peer = free_port(), free_port()
        self.ae = f"HOSP{index}"
        self.proc: subprocess.Popen[str] | None = None

    def init(self) -> None:
        ok(medfed("init", self.dir, "--name", self.name, "--ae-title", self.ae,
                  "--dicom-port", self.dicom, "--peer-port", self.peer, "--dht-port", free_port(),
                  "--http-port", free_port(), "--allow", "STORESCU@127.0.0.1"))
        text = self.cfg.read_text().replace("series_idle_s = 30", "series_idle_s = 1")
        self.cfg.write_text(text)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--config",
                                      str(self.cfg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while dcmtk("echoscu", "-aet", "STORESCU", "-aec", self.ae, "127.0.0.1",
                    self.dicom).returncode != 0:
            assert self.proc.poll() is None, self.proc.communicate()[1]
            assert time.monotonic() < deadline, f"{self.name} did not start"
            time.sleep(0.2)

    def store(self, folder: Path) -> None:
        dcmtk("storescu", "-aet", "STORESCU", "-aec", self.ae, "+sd", "+r", "127.0.0.1",
              self.dicom, folder, check=True)

    def stop(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return ""
        self.proc.send_signal(signal.SIGTERM)
        _out, errs = self.proc.communicate(timeout=30)
        return errs


def _search(site: Site, series_uid: str) -> dict:  # type: ignore[type-arg]
    return json.loads(ok(medfed("similar", "--config", site.cfg, "--series", series_uid,
                                "--modality", "CT", "--top", "5", "--json", "--all")))


def test_similar_across_medfed_run_processes(tmp_path: Path) -> None:
    ENV["MEDFED_TOKEN_DIR"] = str(tmp_path / "tokens")
    operator = tmp_path / "operator"
    created = ok(medfed("federation", "create", operator, "--name", "Cardio Net"))
    fingerprint = re.search(r"\b([0-9a-f]{64})\b", created.replace(":", ""))
    assert fingerprint, created
    sites = [Site(tmp_path, name, i) for i, name in enumerate(SITES)]
    bundles = []
    for site in sites:
        site.init()
        ok(medfed("join", "--config", site.cfg, "--request", site.dir / "request.json"))
        bundle = site.dir / "bundle.json"
        ok(medfed("federation", "admit", site.dir / "request.json", "--out", bundle, "--dir", operator))
        bundles.append(bundle)
    try:
        for site, bundle in zip(sites, bundles):
            ok(medfed("join", "--config", site.cfg, "--bundle", bundle,
                      "--ca-fingerprint", fingerprint.group(1)))
        sites[0].start()
        sites[1].start()
        for peer in sites[:2]:   # charlie's roster lists everyone: it tells the others
            ok(medfed("join", "--config", sites[2].cfg, "--bundle", bundles[2],
                      "--bootstrap", f"127.0.0.1:{peer.peer}",
                      "--ca-fingerprint", fingerprint.group(1)))
        sites[2].start()
        login(sites[0], "dr-a", "clinician")
        login(sites[2], "it-c", "admin")
        for i, site in enumerate(sites):
            ok(medfed("synth", tmp_path / f"in{i}", "--patients", 3, "--series", 1, "--slices", 4,
                      "--size", 32, "--seed", 20 + i))
            site.store(tmp_path / f"in{i}")
        case_files = sorted((tmp_path / "in0").rglob("*.dcm"))
        case = [pydicom.dcmread(p) for p in case_files]
        query_uid = str(case[0].SeriesInstanceUID)
        case = [ds for ds in case if str(ds.SeriesInstanceUID) == query_uid]
        dup_dir = tmp_path / "dup"
        dup_dir.mkdir()
        copies = list(near_duplicate(case, np.random.default_rng(5)))
        for n, ds in enumerate(copies):
            ds.save_as(dup_dir / f"IM{n:04d}.dcm", enforce_file_format=True)
        sites[2].store(dup_dir)

        deadline = time.monotonic() + 120   # vectors are computed once the series are idle
        while True:
            answer = _search(sites[0], query_uid)
            scanned = {s["site"]: (s["status"], s["scanned"]) for s in answer["sites"]}
            if scanned == {"alpha": ("ok", 3), "bravo": ("ok", 3), "charlie": ("ok", 4)}:
                break
            assert time.monotonic() < deadline, scanned
            time.sleep(1.0)
        first = answer["matches"][0]
        assert first["site"] == "charlie" and first["rank"] == 1
        assert first["score"] > answer["matches"][1]["score"]

        run_id = answer["run_id"]
        ok(medfed("diagnose", "--config", sites[0].cfg, "--series", query_uid, "--diagnosis",
                  "apical hypertrophic cardiomyopathy", "--run", run_id, "--match", 1))
        verified = ok(medfed("provenance", "verify", "--config", sites[0].cfg, "--run", run_id))
        assert "5 provenance record(s): intact" in verified
        exported = json.loads(ok(medfed("provenance", "export", "--config", sites[0].cfg,
                                        "--run", run_id)))
        assert any(k.endswith(first["node_id"]) for k in exported["agent"])
        assert ok(medfed("provenance", "verify", "--config", sites[2].cfg)).count("intact") == 1
    finally:
        errors = [site.stop() for site in sites]
        ENV.clear()
    assert all("Traceback" not in e for e in errors), errors
