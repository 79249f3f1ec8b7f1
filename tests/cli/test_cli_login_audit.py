"""A refused CLI password lands in the node's tamper-evident audit log while the node runs.

The running node holds its audit log, so the CLI hands the password to the node (control
socket) and the node checks it and writes `user.refused` itself. Real `medfed run`
process, set up through the CLI only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli.node_process import running
from tests.cli.test_cli import medfed
from tests.dicom_tools import free_port

PASSWORD = "a long enough password"


def run_cli(*args: object, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, input=stdin,
                          env=dict(os.environ, COLUMNS="200", MEDFED_TOKEN=""))


def refusals(audit_path: Path) -> list[dict[str, object]]:
    entries = map(json.loads, audit_path.read_text().splitlines())
    return [e for e in entries if e["action"] == "user.refused"]


def test_refused_passwords_are_audited_by_the_running_node(tmp_path: Path) -> None:
    folder = tmp_path / "n"
    made = medfed("init", folder, "--host", "127.0.0.1", "--dicom-port", free_port(),
                  "--http-port", free_port())
    assert made.returncode == 0, made.stderr
    config = folder / "medfed.toml"
    added = run_cli("user", "add", "alice", "--role", "clinician", "--department", "radiology",
                    "--password-stdin", "--config", config, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    audit_path = folder / "data" / "audit.log"
    with running(config):
        wrong = run_cli("user", "login", "alice", "--print", "--password-stdin", "--config",
                        config, stdin="not her password\n")
        assert wrong.returncode == 1 and "login refused" in wrong.stderr
        nobody = run_cli("query", "--user", "nosuchuser", "--password-stdin", "--all",
                         "--config", config, stdin=PASSWORD + "\n")
        assert nobody.returncode == 1 and "login refused" in nobody.stderr
        right = run_cli("user", "login", "alice", "--print", "--password-stdin", "--config",
                        config, stdin=PASSWORD + "\n")
        assert right.returncode == 0 and right.stdout.startswith("mft_"), right.stderr

    refused = refusals(audit_path)                 # written by the node, in its chain
    assert [(e["actor"], e["detail"]["code"], e["detail"]["via"]) for e in refused] == [
        ("alice", "login_failed", "cli"), ("nosuchuser", "login_failed", "cli")]
    verified = medfed("audit", "verify", "--config", config)
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout
    assert PASSWORD not in audit_path.read_text() and "not her password" not in audit_path.read_text()

    # with the node stopped the CLI checks the password itself and audits it the same way
    stopped = run_cli("user", "login", "alice", "--print", "--password-stdin", "--config",
                      config, stdin="still not it\n")
    assert stopped.returncode == 1 and "login refused" in stopped.stderr
    assert [e["actor"] for e in refusals(audit_path)] == ["alice", "nosuchuser", "alice"]
