"""Worker processes: started with a fixed hash seed, stderr kept in a file, stopped
by their own id; a dead or stalled worker becomes a ``WorkerError`` naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sim.workers.framing import ChannelError, DeadlineChannel

STOP_WAIT_S = 10.0


class WorkerError(RuntimeError):
    """A simulator worker died, stalled past its deadline, or failed a step."""


class WorkerProcess:
    def __init__(self, index: int, directory: Path) -> None:
        self.index = index
        self.log = directory / f"worker{index}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sim.workers.worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, close_fds=True,
                env={**os.environ, "PYTHONHASHSEED": "0"})
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.channel = DeadlineChannel(f"worker {index}", self.proc.stdin.fileno(),
                                       self.proc.stdout.fileno())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, doc: Any, timeout_s: float) -> None:
        try:
            self.channel.send(doc, timeout_s)
        except ChannelError as exc:
            raise self._failure(exc) from exc

    def receive(self, timeout_s: float) -> Any:
        try:
            return self.channel.receive(timeout_s)
        except ChannelError as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: ChannelError) -> WorkerError:
        try:
            code = self.proc.wait(timeout=1.0)
            state = f"exited with code {code}"
        except subprocess.TimeoutExpired:
            state = "is still running"
        return WorkerError(f"simulator worker {self.index} (pid {self.pid}) {state}: {exc}; "
                           f"last lines of {self.log}:\n{self.tail()}")

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def stop(self) -> None:
        """Close its input (a worker exits at EOF); kill it if it does not."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_WAIT_S)
