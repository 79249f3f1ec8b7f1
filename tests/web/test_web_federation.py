"""The web app against a small in-process federation: search with per-site status,
policies that release identities, counts or nothing, transfers, the audit trail."""

from __future__ import annotations

import html
import re
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nibabel
import pytest
import pytest_asyncio

from node.testing.federation import LocalFederation
from node.testing.nodes import free_port
from node.testing.web_federation import start_web_federation
from node.web.service import WebService

from web_support import (artifacts_dir, launch_chromium, wait_for_drawn_image, PASSWORD, browser, chip_statuses, login, page_csrf,
                         sse_events)

NAMES = ["st-mary", "city-general", "north-clinic"]
USERS = [("alice", "clinician", "radiology", PASSWORD), ("rob", "researcher", "oncology", PASSWORD),
         ("ada", "admin", "it", PASSWORD)]
POLICIES = {
    # city-general releases identities to st-mary's treating clinicians
    "city-general": {"small_count_threshold": 5, "rule": [
        {"name": "st-mary treating clinicians", "site": ["st-mary"], "role": "clinician",
         "purpose": "treatment", "level": "identified"},
        {"name": "members", "site": "*", "role": ["clinician", "researcher"],
         "level": "deidentified"},
        {"name": "counts", "site": "*", "level": "count"}]},
    # north-clinic answers clinicians only: researchers are denied
    "north-clinic": {"small_count_threshold": 5, "rule": [
        {"name": "clinicians", "site": "*", "role": "clinician", "level": "deidentified"}]},
}
pytestmark = pytest.mark.asyncio(loop_scope="module")


class Setup:
    def __init__(self, fed: LocalFederation, web: WebService, pacs_dir: Path) -> None:
        self.fed, self.web, self.pacs_dir = fed, web, pacs_dir

    def phi(self) -> set[str]:
        """Every patient name and ID stored at any site (what must not leak)."""
        import sqlite3

        found: set[str] = set()
        for node in self.fed.nodes:
            with sqlite3.connect(node.cfg.db_path) as db:
                for name, pid in db.execute("SELECT name, pid FROM patient_phi"):
                    found.update(v for v in (name, pid) if v)
        return found


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    root = tmp_path_factory.mktemp("webfed")
    pacs_port = free_port()
    pacs_dir = root / "pacs"
    pacs_dir.mkdir()
    pacs_log = (root / "storescp.log").open("wb")
    pacs = subprocess.Popen(["/usr/bin/storescp", "-d", "-aet", "HOMEPACS", "-od", str(pacs_dir),
                             str(pacs_port)], stdout=pacs_log, stderr=subprocess.STDOUT)
    web = WebService()
    fed = await start_web_federation(root / "fed", NAMES, users=USERS, policies=POLICIES,
                                     destinations={"HOMEPACS": ("127.0.0.1", pacs_port),
                                                   "OTHERPACS": ("127.0.0.1", free_port())},
                                     home_pacs="HOMEPACS", web=web)
    try:
        yield Setup(fed, web, pacs_dir)
    finally:
        await fed.stop()
        pacs.terminate()
        pacs.wait(10)
        pacs_log.close()


async def _search(setup: Setup, user: str, query: str) -> list[tuple[str, dict]]:
    async with browser() as client:
        assert (await login(client, setup.web.url, user)).status == 303
        return await sse_events(await client.get(setup.web.url + "api/search?" + query))


async def test_search_streams_site_statuses_and_merges_patients(setup: Setup) -> None:
    events = await _search(setup, "alice", "modality=CT&purpose=treatment")
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "update" and kinds[-1] == "done" and kinds.count("update") == 4
    first, last = events[0][1], events[-1][1]
    assert set(chip_statuses(first["strip"]).values()) == {"waiting"}
    assert chip_statuses(last["strip"]) == {name: "ok" for name in NAMES}
    results = html.unescape(last["results"])
    assert "seen at 3 sites: city-general, north-clinic, st-mary" in results  # one patient, once
    assert results.count('class="patient"') == 8 and results.count('class="series-row"') == 12
    # "find similar cases" is offered on the home site's own series only (the query image
    # never leaves its site)
    home_rows = results.count(f'class="series-row" data-ref="{setup.fed.nodes[0].node_id}:')
    assert home_rows and results.count('data-action="similar"') == home_rows
    # city-general's policy releases identities to alice; the others do not
    names = [n for n in setup.phi() if n in results]
    assert names, "city-general's identified answer shows names"
    assert "identified" in last["strip"] and "deidentified" in last["strip"]


async def test_denied_and_count_only_users_see_no_phi(setup: Setup) -> None:
    phi = setup.phi()
    events = await _search(setup, "rob", "modality=CT&purpose=research")
    statuses = chip_statuses(events[-1][1]["strip"])
    assert statuses["north-clinic"] == "denied" and statuses["st-mary"] == "ok"
    for _, doc in events:
        text = html.unescape(str(doc))
        assert not [value for value in phi if value in text]
    events = await _search(setup, "ada", "modality=CT&purpose=operations")
    last = events[-1][1]
    assert chip_statuses(last["strip"]) == {"st-mary": "ok", "city-general": "ok",
                                            "north-clinic": "denied"}
    assert "&lt;5 patients" in last["strip"]                 # small counts suppressed
    assert 'class="patient"' not in last["results"]         # counts, no rows
    assert not [value for value in phi if value in html.unescape(str(events))]


async def test_bad_searches_are_refused_with_a_reason(setup: Setup) -> None:
    events = await _search(setup, "alice", "age_min=abc&purpose=treatment")
    assert events == [("failed", {"reason": "age min must be a whole number of years"})]
    events = await _search(setup, "alice", "modality=CT&purpose=operations")
    assert events[0][0] == "failed" and "purpose of use" in events[0][1]["reason"]
    async with browser() as anonymous:
        assert (await anonymous.get(setup.web.url + "api/search?modality=CT")).status == 401


async def _job(client, base: str, body: dict) -> tuple[dict, list]:  # type: ignore[no-untyped-def]
    csrf = await page_csrf(client, base, "search")
    resp = await client.post(base + "api/jobs", json=body, headers={"X-CSRF-Token": csrf})
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    return job, await sse_events(await client.get(base + f"api/jobs/{job['id']}/events"))


def _north_series(events: list) -> str:  # type: ignore[type-arg]
    import re

    html = events[-1][1]["results"]
    owner = next(n for n in NAMES if n == "north-clinic")
    rows = re.findall(r'<tr class="series-row" data-ref="([^"]+)">.*?<td>([a-z, -]+)</td>\s*<td><div',
                      html, flags=re.S)
    return next(ref for ref, sites in rows if sites == owner)


async def test_download_nifti_and_send_to_the_home_pacs(setup: Setup) -> None:
    base = setup.web.url
    events = await _search(setup, "alice", "modality=CT&purpose=treatment")
    ref = _north_series(events)
    async with browser() as client:
        await login(client, base, "alice")
        job, progress = await _job(client, base, {"action": "download", "format": "nifti",
                                                  "ref": ref, "purpose": "treatment"})
        assert progress[-1][0] == "done", progress
        url = progress[-1][1]["download"]
        resp = await client.get(base + url.lstrip("/"))
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/gzip"
        target = setup.pacs_dir.parent / "volume.nii.gz"
        target.write_bytes(await resp.read())
        assert nibabel.load(str(target)).shape[:3] == (96, 96, 12)
        assert (await client.get(base + url.lstrip("/"))).status == 404   # taken once
        async with browser() as other:   # another user cannot follow or take alice's job
            await login(other, base, "rob")
            assert (await other.get(base + f"api/jobs/{job['id']}/events")).status == 404

        job, progress = await _job(client, base, {"action": "send", "ref": ref,
                                                  "purpose": "treatment"})
        assert progress[-1] == ("done", {**progress[-1][1], "message": "moved 12 images to HOMEPACS"})
        assert len(list(setup.pacs_dir.iterdir())) == 12
        # C-MOVE sub-operations: from this node's AE title, naming the move originator
        node = setup.fed.nodes[0]
        log = (setup.pacs_dir.parent / "storescp.log").read_text(errors="replace")
        ae = node.cfg.dicom.ae_title
        assert len(re.findall(rf"Move Originator AE Title\s*: {ae}\b", log)) == 12
        assert re.search(rf"Calling Application Name:\s*{ae}\b", log)
        moves = [e for e in map(json.loads, node.cfg.audit_path.read_text().splitlines())
                 if e["action"] == "dicom.move" and e["detail"].get("via") == "web"]
        assert moves[-1]["outcome"] == "ok" and moves[-1]["detail"]["destination"] == "HOMEPACS"
        assert moves[-1]["detail"]["instances"] == 12

        csrf = await page_csrf(client, base, "search")
        for body, status in (({"action": "send", "destination": "NOWHERE", "ref": ref}, 400),
                             ({"action": "send", "destination": "OTHERPACS", "ref": ref}, 400),
                             ({"action": "download", "format": "exe", "ref": ref}, 400),
                             ({"action": "download", "ref": "../../etc/passwd"}, 400)):
            resp = await client.post(base + "api/jobs", json=body, headers={"X-CSRF-Token": csrf})
            assert resp.status == status, body
        resp = await client.post(base + "api/jobs", json={"action": "download", "ref": ref})
        assert resp.status == 403    # no CSRF token


async def test_audit_trail_is_the_users_own_and_admin_status(setup: Setup) -> None:
    base = setup.web.url
    handles = {u.name: u.handle for u in
               __import__("node.users", fromlist=["UserStore"]).UserStore(
                   setup.fed.nodes[0].cfg.data_dir / "users.sqlite").list_users()}
    async with browser() as client:
        await login(client, base, "rob")
        page = await (await client.get(base + "audit?user=alice&actor=" + handles["alice"])).text()
        assert "web.login" in page and "web.search" in page
        assert handles["alice"] not in page
        assert (await client.get(base + "admin")).status == 403
    async with browser() as client:
        await login(client, base, "ada")
        page = await (await client.get(base + "admin")).text()
        assert "intact" in page and all(name in page for name in NAMES)
        assert 'id="repair-backlog"' in page


# -- a real browser (Debian's chromium, driven by Playwright) --------------------------
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chromium() -> AsyncIterator[Any]:
    async with launch_chromium() as browser_:
        yield browser_


async def _browser_login(chromium: Any, base: str, user: str) -> Any:
    context = await chromium.new_context(viewport={"width": 1400, "height": 900},
                                         accept_downloads=True)
    page = await context.new_page()
    await page.goto(base + "search")
    assert page.url.startswith(base + "login")
    await page.fill("#username", user)
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "search", timeout=60_000)
    return page


async def _browser_search(page: Any, purpose: str) -> None:
    await page.select_option("#modality", "CT")
    await page.select_option("#purpose", purpose)
    await page.click("#search-button")
    await page.wait_for_selector("body[data-search=done]", timeout=60_000)


async def test_browser_search_download_and_no_phi_for_the_denied(
        setup: Setup, chromium: Any) -> None:
    shots = artifacts_dir()
    base = setup.web.url
    page = await _browser_login(chromium, base, "alice")
    await _browser_search(page, "treatment")
    chips = page.locator(".site-chip")
    assert await chips.count() == 3
    assert {await c.get_attribute("data-status") for c in await chips.all()} == {"ok"}
    assert await page.locator("tbody.patient").count() == 8
    await page.screenshot(path=str(shots / "search-alice.png"), full_page=True)
    async with page.expect_download(timeout=120_000) as download:
        await page.locator("button[data-format=nifti]").first.click()
    saved = shots / "series.nii.gz"
    await (await download.value).save_as(saved)
    assert nibabel.load(str(saved)).shape[2] == 12
    await page.wait_for_selector(".jtext.ok", timeout=60_000)

    # open another site's study in OHIF from its result row: the image must be drawn
    row = page.locator("tr.series-row", has=page.locator("td", has_text="north-clinic")).first
    async with page.expect_popup() as popup:
        await row.locator("a[data-action=view]").click()
    viewer = await popup.value
    lit, took = await wait_for_drawn_image(viewer, shots / "ohif-remote-study.png")
    print(f"OHIF first image after {took:.1f} s (lit {lit:.2f})")
    assert lit > 0.05, "OHIF drew no image (see ohif-remote-study.png)"
    # the left Studies panel lists the study: OHIF asks /studies?00100020=<the pseudonym
    # the row showed>, which the federation matches as the pseudonym at every site
    thumbs = viewer.locator('[data-cy="studyBrowser-panel"] [data-cy="study-browser-thumbnail"]')
    await thumbs.first.wait_for(timeout=60_000)
    assert await thumbs.count() >= 1
    await viewer.screenshot(path=str(shots / "ohif-remote-study-panel.png"))
    await page.context.close()

    page = await _browser_login(chromium, base, "rob")
    await _browser_search(page, "research")
    statuses = {await c.get_attribute("data-site"): await c.get_attribute("data-status")
                for c in await page.locator(".site-chip").all()}
    assert statuses["north-clinic"] == "denied"
    text = await page.inner_text("body")
    assert not [value for value in setup.phi() if value in text]
    await page.screenshot(path=str(shots / "search-rob-denied.png"), full_page=True)
    await page.context.close()
    print(f"screenshots: {shots}")
