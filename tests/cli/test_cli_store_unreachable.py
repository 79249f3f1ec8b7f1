"""`medfed run` with a PostgreSQL store it cannot reach says so and exits 2: the IT
person gets the address and the driver's reason, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.dicom_tools import free_port


def test_an_unreachable_postgresql_store_is_a_clear_start_error(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "node.cli", "init", str(tmp_path / "n"),
                    "--dicom-port", str(free_port()), "--peer-port", str(free_port()),
                    "--dht-port", str(free_port()), "--http-port", str(free_port())],
                   check=True, capture_output=True)
    cfg = tmp_path / "n" / "medfed.toml"
    missing = tmp_path / "no-such-socket-dir"
    cfg.write_text(cfg.read_text()
                   + f'\n[store]\nurl = "postgresql://medfed@/medfed?host={missing}"\n')
    run = subprocess.run([sys.executable, "-m", "node.cli", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "the node did not start" in out and "cannot open metadata database" in out
    assert str(missing) in out.replace("\n", "")
    assert "Traceback" not in out
