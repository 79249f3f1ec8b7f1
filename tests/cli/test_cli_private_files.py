"""A node started by `medfed init` + `medfed run` from a shell with umask 022 keeps its data
folder to itself: another OS user reads none of its files; a folder or database opened to
others, a second node on the same folder and a taken port stop `run` with a clear message."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dicom_tools import dcmtk, free_port

STARTED = "running"


def _umask_022() -> None:
    os.umask(0o022)


def medfed(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, COLUMNS="300"), preexec_fn=_umask_022)


def one_line(text: str) -> str:
    return " ".join(text.split())


class RunningNode:
    def __init__(self, cfg: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "run", "--config", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, COLUMNS="300"), preexec_fn=_umask_022)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # event-driven: `run` prints once everything listens
            if STARTED in line:
                return
        _out, errs = self.proc.communicate(timeout=60)
        raise AssertionError(f"medfed run did not start: {errs}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def shared_base() -> Iterator[Path]:
    """A folder every user may enter (pytest's own tmp folders are 0700, which would hide
    the node's files from other users whatever their modes)."""
    base = Path(tempfile.mkdtemp(prefix="medfed-private-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def site(shared_base: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    made = medfed("init", shared_base / "site", "--host", "127.0.0.1", "--dicom-port", port,
                  "--peer-port", free_port(), "--dht-port", free_port(),
                  "--http-port", free_port(),   # no fixed port: suites may run side by side
                  "--allow", "STORESCU@127.0.0.1", "--allow", "ECHOSCU@127.0.0.1")
    assert made.returncode == 0, made.stderr
    synth = medfed("synth", shared_base / "in", "--patients", 1, "--series", 1, "--slices", 2,
                   "--size", 32)
    assert synth.returncode == 0, synth.stderr
    yield shared_base / "site" / "medfed.toml", port


def as_nobody(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *map(str, cmd)],
                          capture_output=True, text=True, timeout=60)


def test_another_os_user_reads_nothing_of_a_running_node(site: tuple[Path, int]) -> None:
    cfg, port = site
    data = cfg.parent / "data"
    node = RunningNode(cfg)
    try:
        dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r", "127.0.0.1", port,
              cfg.parent.parent / "in", check=True)
        files = [p for p in data.rglob("*") if p.is_file() or p.is_socket()]
        names = {p.name for p in files}
        assert {"medfed.sqlite", "medfed.sqlite-wal", "audit.log", "signing.key"} <= names
        assert any(p.suffix == ".dcm" for p in files), "the stored images are there"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        loose = {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode))
                 for p in [data, *data.rglob("*")] if p.stat().st_mode & 0o077}
        assert loose == {}, f"open to other users: {loose}"
        for path in files:
            if path.is_file():
                attempt = as_nobody("cat", path)
                assert attempt.returncode != 0 and attempt.stdout == "", path
        listing = as_nobody("ls", data)
        assert listing.returncode != 0 and "medfed.sqlite" not in listing.stdout
        assert stat.S_IMODE(cfg.stat().st_mode) & 0o077 == 0, "the config is private too"
    finally:
        node.stop()
    assert node.proc.returncode == 0


def test_run_refuses_a_folder_or_database_others_can_read(site: tuple[Path, int]) -> None:
    cfg, _port = site
    data = cfg.parent / "data"
    db = data / "medfed.sqlite"
    if not db.exists():  # this test may run on its own
        RunningNode(cfg).stop()
    try:
        os.chmod(data, 0o755)
        refused = medfed("run", "--config", cfg)
        assert refused.returncode == 2
        message = one_line(refused.stderr)
        assert f"data folder {data} is open to other users (mode 0755)" in message
        assert f"chmod -R go-rwx {data}" in message
        assert "Traceback" not in refused.stderr + refused.stdout
        os.chmod(data, 0o700)
        os.chmod(db, 0o644)
        refused = medfed("run", "--config", cfg)
        assert refused.returncode == 2
        assert f"{db} is open to other users (mode 0644)" in one_line(refused.stderr)
    finally:
        os.chmod(data, 0o700)
        os.chmod(db, 0o600)


def test_second_node_on_the_same_folder_is_told_who_holds_it(site: tuple[Path, int]) -> None:
    cfg, _port = site
    node = RunningNode(cfg)
    try:
        second = medfed("run", "--config", cfg)
        assert second.returncode == 2
        message = one_line(second.stderr)
        assert f"another medfed node (pid {node.proc.pid}) is running on the data folder " \
               f"{cfg.parent / 'data'}" in message
        assert "Traceback" not in second.stderr + second.stdout
    finally:
        node.stop()
    assert node.proc.returncode == 0


def test_a_taken_port_is_named_with_its_config_key(site: tuple[Path, int]) -> None:
    cfg, port = site
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        refused = medfed("run", "--config", cfg)
    assert refused.returncode == 2
    message = one_line(refused.stderr)
    assert f"the DICOM port 127.0.0.1:{port} is already in use" in message
    assert "[dicom] port" in message
    assert "Traceback" not in refused.stderr + refused.stdout
    RunningNode(cfg).stop()  # once the port is free it starts: the failed run left no lock
