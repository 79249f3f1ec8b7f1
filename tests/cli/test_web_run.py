"""A hospital's own steps, CLI only: init, add a user, run; the printed web address serves
the sign-in page and the user can sign in (a separate `medfed run` process)."""

from __future__ import annotations

import http.cookiejar
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from node.testing.nodes import free_port

MEDFED = [sys.executable, "-m", "node.cli"]
PASSWORD = "a long enough password"


def test_medfed_run_serves_the_web_app(tmp_path: Path) -> None:
    site = tmp_path / "site"
    web_port = free_port()
    subprocess.run([*MEDFED, "init", str(site), "--name", "St Example", "--dicom-port",
                    str(free_port()), "--http-port", str(web_port), "--peer-port",
                    str(free_port()), "--dht-port", str(free_port())],
                   check=True, capture_output=True, timeout=120)
    config = site / "medfed.toml"
    subprocess.run([*MEDFED, "user", "add", "alice", "--role", "clinician", "--department",
                    "radiology", "--password-stdin", "--config", str(config)],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=120)
    node = subprocess.Popen([*MEDFED, "run", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert node.stdout is not None
        end, line = time.monotonic() + 180, ""
        while time.monotonic() < end and not line.startswith("web: "):
            line = node.stdout.readline()
            assert line or node.poll() is None, "medfed run exited before serving"
        assert line.strip() == f"web: http://127.0.0.1:{web_port}/"
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = browser.open(f"http://127.0.0.1:{web_port}/", timeout=60).read().decode()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token and "Sign in" in page
        form = urllib.parse.urlencode({"csrf": token.group(1), "next": "/search",
                                       "username": "alice", "password": PASSWORD}).encode()
        search = browser.open(f"http://127.0.0.1:{web_port}/login", data=form, timeout=60)
        text = search.read().decode()
        assert search.url.endswith("/search") and "alice" in text and "Federated search" in text
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(10)
