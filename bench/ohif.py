"""OHIF time to first image, local vs remote series: ``python -m bench.ohif [--runs 3]``.

Why: the issue's target is that a study held at another site (fetched as an encrypted
bundle, decrypted into the home node's memory cache, served by its DICOMweb) reaches
its first drawn image in the viewer within 2x the time of one of the home node's own
studies. Three sites on loopback; for each run a fresh headless Chromium context (no
cached assets) signs in, opens a different, not yet viewed study in OHIF, and the clock
runs from navigation until the viewport's pixels are lit (screenshots, not the DOM).
Rendering is SwiftShader on the CPU, so the absolute figure depends on the cores free.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from node.datadir import make_private_dir
from node.testing.web_federation import start_web_federation

SITES = ["home", "remote", "third"]   # three: 2-of-3 key shares need three holders
USER, PASSWORD = "bench.viewer", "bench-viewer-password"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT_BOX = (450, 150, 1250, 800)
DEADLINE_S = 300.0
TARGET_RATIO = 2.0


def _lit(png: bytes) -> float:
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L").crop(VIEWPORT_BOX)
    histogram = image.histogram()
    return sum(histogram[60:]) / max(1, sum(histogram))


async def _studies(chromium: Any, base: str) -> dict[str, list[str]]:
    """Viewer links of every CT study, by the site that holds it (from the search page)."""
    context = await chromium.new_context(viewport={"width": 1400, "height": 900})
    page = await _sign_in(context, base)
    await page.select_option("#modality", "CT")
    await page.click("#search-button")
    await page.wait_for_selector("body[data-search=done]", timeout=120_000)
    found: dict[str, list[str]] = {name: [] for name in SITES}
    for row in await page.locator("tr.series-row").all():
        site = (await row.locator("td").nth(6).inner_text()).strip()
        href = await row.locator("a[data-action=view]").get_attribute("href")
        if site in found and href and href not in found[site]:
            found[site].append(href)
    await context.close()
    return found


async def _sign_in(context: Any, base: str) -> Any:
    page = await context.new_page()
    await page.goto(base + "login")
    await page.fill("#username", USER)
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "search", timeout=120_000)
    return page


async def _first_image_s(chromium: Any, base: str, href: str) -> float:
    context = await chromium.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = await _sign_in(context, base)
        started = time.monotonic()
        await page.goto(base + href.lstrip("/"))
        while time.monotonic() - started < DEADLINE_S:
            if _lit(await page.screenshot()) > 0.05:
                return time.monotonic() - started
            await page.wait_for_timeout(250)
        raise RuntimeError(f"no image drawn within {DEADLINE_S:.0f}s for {href}")
    finally:
        await context.close()


async def run(runs: int) -> dict[str, list[float]]:
    from playwright.async_api import async_playwright

    root = Path(tempfile.mkdtemp(prefix="medfed-bench-ohif-"))
    make_private_dir(root / "fed")
    fed = await start_web_federation(root / "fed", SITES,
                                     users=[(USER, "clinician", "radiology", PASSWORD)])
    try:
        base = fed.nodes[0].service("web").url  # type: ignore[union-attr]
        async with async_playwright() as driver:
            chromium = await driver.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])
            try:
                studies = await _studies(chromium, base)
                times: dict[str, list[float]] = {"local": [], "remote": []}
                for n in range(runs):
                    for kind, site in (("local", "home"), ("remote", "remote")):
                        href = studies[site][n % len(studies[site])]
                        seconds = await _first_image_s(chromium, base, href)
                        times[kind].append(seconds)
                        print(f"  run {n + 1} {kind:6} {re.sub(r'.*=', '', href)[-12:]}: "
                              f"first image after {seconds:.1f} s", flush=True)
                return times
            finally:
                await chromium.close()
    finally:
        await fed.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ohif", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="views of each kind (<= 4)")
    args = parser.parse_args(argv)
    times = asyncio.run(run(min(4, max(1, args.runs))))
    local, remote = statistics.median(times["local"]), statistics.median(times["remote"])
    ratio = remote / local
    print(f"OHIF time to first image (median of {len(times['local'])}): local {local:.1f} s, "
          f"remote {remote:.1f} s, remote/local {ratio:.2f} "
          f"(target <= {TARGET_RATIO:.1f}: {'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
