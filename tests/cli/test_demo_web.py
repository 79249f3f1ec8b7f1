"""`medfed demo` as a person runs it: prints the web address and a login, answers 401 on
DICOMweb without a token, serves the login page, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from node.testing.nodes import free_port

DEADLINE_S = 600.0   # the whole demo on a busy 2-core machine


def _read_until(fd: int, pattern: str, seen: list[str], proc: subprocess.Popen[bytes]) -> str:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        text = re.sub(r"\x1b\[[0-9;]*m", "", "".join(seen)).replace("\r", "")
        if re.search(pattern, text):
            return text
        try:
            chunk = os.read(fd, 65536)
        except OSError:   # the demo exited and closed its terminal
            chunk = b""
        if not chunk:
            raise AssertionError(f"demo ended (exit {proc.poll()}) before {pattern!r}:\n{text[-3000:]}")
        seen.append(chunk.decode(errors="replace"))
    raise AssertionError(f"no {pattern!r} within {DEADLINE_S:.0f}s")


def test_demo_keeps_the_web_app_up_until_ctrl_c(tmp_path: Path) -> None:
    base = free_port()
    leader, follower = pty.openpty()   # a terminal on stdin: the demo waits for Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "demo", "--base-port", str(base),
                             "--dir", str(tmp_path / "demo")],
                            stdin=follower, stdout=follower, stderr=follower,
                            env={**os.environ, "COLUMNS": "200"})
    os.close(follower)
    seen: list[str] = []
    try:
        text = _read_until(leader, r"Press Ctrl-C", seen, proc)
        assert f"web: http://127.0.0.1:{base}/" in text
        login = re.search(r"^login: (\S+) (\S+)$", text, flags=re.M)
        assert login and login.group(1) == "dr.demo"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{base}/dicomweb/studies", timeout=30)
            raise AssertionError("DICOMweb answered without a token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        page = urllib.request.urlopen(f"http://127.0.0.1:{base}/", timeout=30)
        assert page.url.endswith("/login?next=/") and b"Sign in" in page.read()
        proc.send_signal(signal.SIGINT)
        _read_until(leader, r"demo finished", seen, proc)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        os.close(leader)
