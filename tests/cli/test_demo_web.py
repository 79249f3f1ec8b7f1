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
    # ephemeral ports, as `make demo` runs it: `--base-port N` takes N and the ports after
    # it, which other processes on a busy machine may hold (it failed CI that way)
    leader, follower = pty.openpty()   # a terminal on stdin: the demo waits for Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "demo",
                             "--dir", str(tmp_path / "demo")],
                            stdin=follower, stdout=follower, stderr=follower,
                            env={**os.environ, "COLUMNS": "200"})
    os.close(follower)
    seen: list[str] = []
    try:
        text = _read_until(leader, r"Press Ctrl-C", seen, proc)
        web = re.search(r"^web: http://127\.0\.0\.1:(\d+)/$", text, flags=re.M)
        assert web, "the demo did not print its web address"
        base = int(web.group(1))
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


def test_base_port_places_every_demo_port_after_it() -> None:
    """`--base-port N` (not started here: N and the ports after it may be taken on a busy
    machine): the web app on N, the hospitals' peer ports from N + 10, the rest offset."""
    from node.cli.demo_federation import DemoPorts

    assert DemoPorts(0).web() == 0 and DemoPorts(0).peers(5) is None and DemoPorts(0).offset(3) == 0
    ports = DemoPorts(20000)
    assert ports.web() == 20000
    assert ports.peers(5) == [20010, 20011, 20012, 20013, 20014]
    assert ports.offset(3) == 20003
