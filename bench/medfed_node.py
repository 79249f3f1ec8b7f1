"""A real medfed node in its own process, as `medfed init` + `medfed run` make it.

Why a subprocess: Orthanc runs as a separate process too, so neither side shares the
benchmark's interpreter (GIL, allocator) with the clients that drive it.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from node.config.model import load_config

from .scu import BenchError, Target

AE_TITLE = "MEDFED"
ALLOW = ("STORESCU@127.0.0.1", "FINDSCU@127.0.0.1", "GETSCU@127.0.0.1",
         "MOVESCU@127.0.0.1", "PYNETDICOM@127.0.0.1", "ECHOSCU@127.0.0.1")
MOVE_DESTINATION = "BENCHSCP"
_PORT_RE = re.compile(rb"DICOM\s+(?:\S+@)?[\d.]+:(\d+)")   # "DICOM AE@host:port" or "DICOM  host:port/tcp"
_WEB_RE = re.compile(rb"web: (http\S+)")
START_TIMEOUT_S = 60.0


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "node.cli", *map(str, args)]


class MedfedNode:
    """``with MedfedNode(folder) as node:`` a fresh node on an ephemeral DICOM port."""

    def __init__(self, folder: Path, move_port: int = 0, receivers: int | None = None) -> None:
        self.folder = folder
        self.receivers = receivers  # `[dicom] receivers`; None = the node's default
        self.move_port = move_port  # a C-MOVE destination BENCHSCP on this port, if set
        self.config = folder / "medfed.toml"
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: list[bytes] = []
        self.target = Target(0, AE_TITLE)
        self.web_url = ""                       # what `medfed run` prints as "web: ..."
        self._web = threading.Event()

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError("the medfed node is not running")
        return self._proc.pid

    def start(self) -> "MedfedNode":
        allow = [a for entry in ALLOW for a in ("--allow", entry)]
        if self.move_port:
            allow += ["--destination", f"{MOVE_DESTINATION}=127.0.0.1:{self.move_port}"]
        init = subprocess.run(_cli("init", self.folder, "--ae-title", AE_TITLE, "--name",
                                   "bench", "--dicom-port", "0", "--http-port", "0",
                                   "--peer-port", "0", "--dht-port", "0", *allow),
                              capture_output=True, timeout=60)
        if init.returncode != 0:
            raise BenchError(f"medfed init failed: {init.stderr.decode(errors='replace')[-500:]}")
        if self.receivers is not None:
            self._set_receivers(self.receivers)
        env = dict(os.environ, COLUMNS="200", TERM="dumb")
        self._proc = subprocess.Popen(_cli("run", "--config", self.config, "--log-level",
                                           "WARNING"), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env)
        self.target = Target(self._wait_for_port(), AE_TITLE)
        return self

    def _set_receivers(self, count: int) -> None:
        """Write `receivers = count` into the [dicom] table of the config init wrote."""
        text = self.config.read_text()
        if "\n[dicom]\n" not in "\n" + text:
            raise BenchError(f"{self.config} has no [dicom] table to set receivers in")
        self.config.write_text(("\n" + text).replace("\n[dicom]\n",
                                                     f"\n[dicom]\nreceivers = {count}\n", 1)[1:])

    def _wait_for_port(self) -> int:
        """The node prints its bound port once its DICOM service listens."""
        assert self._proc is not None and self._proc.stdout is not None
        found: list[int] = []
        ready = threading.Event()
        stream = self._proc.stdout

        def pump() -> None:  # keeps draining so the node never blocks on a full pipe
            for line in iter(stream.readline, b""):
                self._output.append(line)
                match = _PORT_RE.search(line)
                if match and not found:
                    found.append(int(match.group(1)))
                    ready.set()
                web = _WEB_RE.search(line)
                if web:
                    self.web_url = web.group(1).decode().rstrip("/")
                    self._web.set()
            ready.set()
            self._web.set()

        threading.Thread(target=pump, daemon=True, name="medfed-node-output").start()
        if not ready.wait(START_TIMEOUT_S) or not found:
            self.stop()
            raise BenchError(f"the medfed node did not start: {self.output_tail()}")
        return found[0]

    def wait_for_web(self) -> str:
        """The web app's address once `medfed run` printed it."""
        if not self._web.wait(START_TIMEOUT_S) or not self.web_url:
            raise BenchError(f"the medfed node printed no web address: {self.output_tail()}")
        return self.web_url

    def output_tail(self, chars: int = 800) -> str:
        """The end of what the node printed (its errors say what went wrong)."""
        return b"".join(self._output)[-chars:].decode(errors="replace").strip()

    def stored_instances(self) -> int:
        """Instances with a committed file, read from the node's SQLite (read-only)."""
        db = load_config(self.config).db_path
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            (count,) = conn.execute(
                "SELECT count(*) FROM instances WHERE path IS NOT NULL").fetchone()
        finally:
            conn.close()
        return int(count)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> "MedfedNode":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

