"""Shared helpers for the web app's tests: a node with its web port, users, a browser-like client."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.config.model import NodeConfig
from node.datadir import make_private_dir
from node.node import Node
from node.service import NodeService
from node.testing.nodes import loopback_config
from node.testing.web_federation import add_users as add_demo_users
from node.web.service import WebService

PASSWORD = "correct horse battery"
USERS = (("alice", "clinician", "radiology"), ("rob", "researcher", "oncology"),
         ("ada", "admin", "it"))


def add_users(data_dir: Path, users: Sequence[tuple[str, str, str]] = USERS) -> None:
    """The node's users, as `medfed user add` makes them (its data folder stays private)."""
    add_demo_users(data_dir, [(name, role, dept, PASSWORD) for name, role, dept in users])


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A hospital-style TLS certificate for 127.0.0.1 (what [http] cert/key point at)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medfed web test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "web.crt", directory / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def web_config(data_dir: Path, **overrides: Any) -> NodeConfig:
    return replace(loopback_config(data_dir, name="St Example Hospital"), **overrides)


@asynccontextmanager
async def web_node(cfg: NodeConfig, *, web: WebService | None = None,
                   services: Sequence[NodeService] = ()) -> AsyncIterator[tuple[Node, WebService]]:
    """A stand-alone node (no DICOM port) serving the web app; users from ``add_users``."""
    svc = web or WebService()
    make_private_dir(cfg.data_dir)
    node = Node(cfg, services=[*services, svc], with_dicom=False)
    await node.start()
    try:
        yield node, svc
    finally:
        await node.stop()


def browser(**kwargs: Any) -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar refuses IP hosts)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name} in page"
    return match.group(1)


async def login(client: aiohttp.ClientSession, base: str, user: str,
                password: str = PASSWORD, next_path: str = "/") -> aiohttp.ClientResponse:
    """Fill in the login form as a browser would; returns the (unfollowed) answer."""
    page = await (await client.get(base + "login")).text()
    return await client.post(base + "login", allow_redirects=False, data={
        "csrf": hidden(page, "csrf"), "next": next_path, "username": user,
        "password": password})


async def page_csrf(client: aiohttp.ClientSession, base: str, path: str = "") -> str:
    """The session's CSRF token, as a page of the app carries it."""
    return hidden(await (await client.get(base + path)).text(), "csrf")


async def sse_events(resp: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """Every server-sent event of a finished stream, as (event name, JSON data)."""
    import json

    events = []
    for block in (await resp.text()).split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines.get("data", "{}"))))
    return events


def chip_statuses(strip_html: str) -> dict[str, str]:
    return dict(re.findall(r'data-site="([^"]+)" data-status="([^"]+)"', strip_html))


CHROMIUM = "/usr/bin/chromium"   # Debian's package, installed by scripts/bootstrap.sh
# Screenshots of browser tests, kept after the run (pytest's own tmp folders rotate away).
ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts" / "web"


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Any]:
    """Debian's headless chromium driven by Playwright (SwiftShader for OHIF's WebGL)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser_ = await driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])
        try:
            yield browser_
        finally:
            await browser_.close()


def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def bright_fraction(png: bytes, box: tuple[int, int, int, int] | None = None) -> float:
    """Share of pixels (in ``box``) that are clearly lit: an image drawn, not a black canvas."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    if box is not None:
        image = image.crop(box)
    histogram = image.histogram()
    return sum(histogram[60:]) / max(1, sum(histogram))


VIEWPORT_BOX = (450, 150, 1250, 800)   # OHIF's viewport: the study list and toolbar stay out
FIRST_IMAGE_DEADLINE_S = 240.0   # 9-18 s on 2 idle cores with SwiftShader; generous for a busy CI


async def wait_for_drawn_image(viewer: Any, shot: Path,
                               deadline_s: float = FIRST_IMAGE_DEADLINE_S) -> tuple[float, float]:
    """Poll the viewer's viewport until an image is drawn; (lit fraction, seconds taken).

    A popup that has not painted its first frame yet (still navigating, on a loaded
    machine) makes Chromium refuse ``Page.captureScreenshot`` with "Unable to capture
    screenshot": that is "nothing drawn yet", not a failure, until the deadline.
    The last screenshot is saved to ``shot`` so a failure can be looked at.
    """
    import time

    from playwright.async_api import Error as PlaywrightError

    started, lit = time.monotonic(), 0.0
    await viewer.wait_for_load_state("domcontentloaded", timeout=deadline_s * 1000)
    while time.monotonic() - started < deadline_s:
        try:
            lit = bright_fraction(await viewer.screenshot(), box=VIEWPORT_BOX)
        except PlaywrightError as error:
            if "Unable to capture screenshot" not in str(error):
                raise
        if lit > 0.05:
            break
        await viewer.wait_for_timeout(500)
    try:
        await viewer.screenshot(path=str(shot))
    except PlaywrightError:
        pass   # the figure is ``lit``; the picture is only for a person looking at a failure
    return lit, time.monotonic() - started
