"""DICOMweb of a node set up and run only through the medfed command, as a hospital does:
`medfed init`, `medfed user add`, `medfed user login --print` for a token, `medfed run`;
then dicomweb-client stores a study (STOW-RS), finds it (QIDO-RS) and reads it back
(WADO-RS), all against the separate `medfed run` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from node.synth.generate import generate
from tests.dicom_tools import free_port

PASSWORD = "a long enough password"


def medfed(*args: object, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _wait_for_web(node: subprocess.Popen[str]) -> str:
    """The web address `medfed run` prints (a line ``web: http://...``)."""
    assert node.stdout is not None
    deadline = time.monotonic() + 90
    seen = []
    while time.monotonic() < deadline:
        line = node.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(r"web:\s+(http\S+)", line)
        if found:
            return found.group(1).rstrip("/")
    pytest.fail("medfed run printed no web address:\n" + "".join(seen[-20:]))


def test_dicomweb_of_a_node_run_by_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "hospital"
    medfed("init", folder, "--name", "CLI Hospital", "--ae-title", "CLIHOSP",
           "--dicom-port", free_port(), "--http-port", free_port(), "--peer-port", free_port(),
           "--dht-port", free_port())
    config = folder / "medfed.toml"
    medfed("user", "add", "alice", "--role", "clinician", "--department", "radiology",
           "--password-stdin", "--config", config, stdin=f"{PASSWORD}\n{PASSWORD}\n")
    token = medfed("user", "login", "alice", "--print", "--password-stdin", "--config", config,
                   stdin=PASSWORD + "\n").stdout.strip().splitlines()[-1]
    files = generate(tmp_path / "in", patients=1, studies=1, series=1, slices=3, rows=32,
                     cols=32, seed=3).files
    originals = [pydicom.dcmread(f) for f in files]
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = _wait_for_web(node) + "/dicomweb"
        assert requests.get(base + "/studies", timeout=30).status_code == 401
        client = DICOMwebClient(base, headers={"Authorization": f"Bearer {token}"})
        stored = client.store_instances(originals)
        assert len(stored.ReferencedSOPSequence) == len(originals)
        studies = client.search_for_studies(search_filters={"PatientID": originals[0].PatientID})
        assert [s["0020000D"]["Value"][0] for s in studies] == [originals[0].StudyInstanceUID]
        assert studies[0]["00080054"]["Value"] == ["CLIHOSP"]
        got = client.retrieve_series(originals[0].StudyInstanceUID, originals[0].SeriesInstanceUID)
        want = {d.SOPInstanceUID: d.PixelData for d in originals}
        assert {d.SOPInstanceUID: d.PixelData for d in got} == want
        meta = client.retrieve_series_metadata(originals[0].StudyInstanceUID,
                                               originals[0].SeriesInstanceUID)
        uri = meta[0]["7FE00010"]["BulkDataURI"]
        assert uri.startswith(base)                     # from the node's address, not Host
        assert client.retrieve_bulkdata(uri)[0] in want.values()
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=30)
    assert node.returncode == 0
    verify = medfed("audit", "verify", "--config", config)
    assert "intact" in verify.stdout
    log = (folder / "data" / "audit.log").read_text()
    assert "dicomweb.store" in log and "dicomweb.retrieve" in log
    assert originals[0].PatientID not in log
