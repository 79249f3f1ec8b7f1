"""A `medfed run` process for CLI tests: output to files (a pipe nobody reads fills up and
stalls the node), started once it printed its last address line, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_DEADLINE_S = 300.0     # generous: the machine may be loaded


class NodeProcess:
    def __init__(self, config: Path, name: str = "node") -> None:
        self.config = config
        self.name = name
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.runs = 0

    def start(self) -> list[str]:
        """`medfed run`; returns the lines it printed once everything listens."""
        self.runs += 1
        out = self.config.parent / f"run-{self.runs}.out"
        err = out.with_suffix(".err")
        with open(out, "w") as stdout, open(err, "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--config",
                                          str(self.config)], stdout=stdout, stderr=stderr,
                                         text=True, env=dict(os.environ, COLUMNS="300"))
        started = time.monotonic()
        while True:
            lines = [line.strip() for line in out.read_text().splitlines()]
            if any(line.startswith("control") for line in lines):   # the last address line
                self.lines = lines
                return lines
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {out.read_text()}{err.read_text()}")
            if time.monotonic() - started > START_DEADLINE_S:
                raise AssertionError(f"{self.name} did not start within {START_DEADLINE_S:.0f} s")
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code (None if it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=START_DEADLINE_S)
        return proc.returncode


@contextmanager
def running(config: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(config)
    node.start()
    try:
        yield node
    finally:
        code = node.stop()
    assert code == 0, f"the node exited with {code}"
