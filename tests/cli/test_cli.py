"""The medfed command as a PACS team uses it: init, run, status, audit verify, synth."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from tests.dicom_tools import dcmtk, free_port


def medfed(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, COLUMNS="200"))


def test_init_writes_commented_config_and_private_keys(tmp_path: Path) -> None:
    proc = medfed("init", tmp_path / "n", "--ae-title", "STEX", "--dicom-port", 11999,
                  "--name", "St Example", "--allow", "CT01@10.0.0.5", "--allow", "PACS@*",
                  "--destination", "VIEWER=127.0.0.1:11113")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "n" / "medfed.toml").read_text()
    assert text.count("#") > 20, "the config explains itself"
    cfg = tomllib.loads(text)
    assert cfg["dicom"]["ae_title"] == "STEX" and cfg["dicom"]["port"] == 11999
    assert cfg["dicom"]["allow"] == ["CT01@10.0.0.5", "PACS@*"]
    assert cfg["dicom"]["destinations"] == {"VIEWER": "127.0.0.1:11113"}
    keys = tmp_path / "n" / "data" / "keys"
    for name in ("signing.key", "box.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    node_id = (keys / "node_id").read_text().strip()
    assert len(node_id) == 64 and node_id in proc.stdout
    again = medfed("init", tmp_path / "n")
    assert again.returncode != 0 and "exists" in again.stderr


def test_init_refuses_bad_allow_entry(tmp_path: Path) -> None:
    proc = medfed("init", tmp_path / "n", "--allow", "WAY_TOO_LONG_AE_TITLE_X@host")
    assert proc.returncode == 2
    assert "AE title" in proc.stderr
    assert not (tmp_path / "n" / "medfed.toml").exists()


def test_bad_config_is_reported_with_the_key(tmp_path: Path) -> None:
    medfed("init", tmp_path / "n")
    cfg = tmp_path / "n" / "medfed.toml"
    cfg.write_text(cfg.read_text().replace("port = 11112", "port = 99999", 1))
    proc = medfed("status", "--config", cfg)
    assert proc.returncode == 2
    assert "dicom.port" in proc.stderr


def test_run_store_status_and_audit_verify(tmp_path: Path) -> None:
    port = free_port()
    medfed("init", tmp_path / "n", "--host", "127.0.0.1", "--dicom-port", port, "--allow",
           "STORESCU@127.0.0.1", "--http-port", free_port(), "--peer-port", free_port(),
           "--dht-port", free_port())  # not the defaults: another node may hold them
    cfg = tmp_path / "n" / "medfed.toml"
    synth = medfed("synth", tmp_path / "in", "--patients", 1, "--series", 1, "--slices", 4,
                   "--size", 32)
    assert synth.returncode == 0, synth.stderr
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a node starting on a busy host: no fixed count
        while dcmtk("echoscu", "-aet", "STORESCU", "-aec", "MEDFED", "127.0.0.1",
                    port).returncode != 0:
            if node.poll() is not None or time.monotonic() > deadline:
                node.kill()
                raise AssertionError(f"node did not start: {node.communicate()[1][-2000:]}")
            time.sleep(0.1)
        dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r", "127.0.0.1", port,
              tmp_path / "in", check=True)
    finally:
        node.send_signal(signal.SIGTERM)
        out, errs = node.communicate(timeout=20)
    assert node.returncode == 0, errs
    assert "stopped cleanly" in out
    status = medfed("status", "--config", cfg)
    assert status.returncode == 0, status.stderr
    assert "instances" in status.stdout and " 4 " in status.stdout.replace("│", " ")
    ok = medfed("audit", "verify", "--config", cfg)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact" in ok.stdout
    # Tamper with one entry: verify must find it.
    log = tmp_path / "n" / "data" / "audit.log"
    lines = log.read_text().splitlines()
    entry = json.loads(lines[2])
    entry["outcome"] = "ok-edited"
    lines[2] = json.dumps(entry, separators=(",", ":"), sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    bad = medfed("audit", "verify", "--config", cfg)
    assert bad.returncode == 1
    assert "line 3" in bad.stdout
