"""Find similar cases in the web app (issue 14), in headless Chromium against a small
in-process federation: st-mary is home (the clinician's case), city-general holds a
near-duplicate of it with a recorded diagnosis (its policy releases diagnoses),
north-clinic's policy runs no similarity method (it answers denied).

The page streams site statuses, ranks the planted copy first with its de-identified
diagnosis, opens it in OHIF (the image is drawn), records the clinician's diagnosis at
home linked to the match (provenance verifies), and OHIF's study shows a link back to
the page.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import pytest_asyncio

from node.deid.actions import keyed_uid
from node.net.assertion import issue_assertion
from node.node import Node
from node.similar.service import SimilarityService
from node.store.ingest_local import ingest_dataset
from node.synth.duplicate import near_duplicate
from node.testing.federation import LocalFederation
from node.testing.web_federation import publish_all, start_web_federation
from node.web.service import WebService

from web_support import PASSWORD, artifacts_dir, launch_chromium, wait_for_drawn_image

pytestmark = pytest.mark.asyncio(loop_scope="module")
NAMES = ["st-mary", "city-general", "north-clinic"]
USERS = [("alice", "clinician", "cardiology", PASSWORD)]
DIAGNOSIS = "Hypertrophic cardiomyopathy, patient DUP0001"   # near_duplicate's patient ID
MEMBERS = {"small_count_threshold": 5, "rule": [
    {"name": "members", "site": "*", "role": "clinician", "level": "deidentified"}]}
POLICIES = {"city-general": {**MEMBERS, "similarity_methods": ["hist", "embed"],
                             "similarity_release": "diagnosis"},
            "north-clinic": {**MEMBERS, "similarity_methods": []}}


class World:
    def __init__(self, fed: LocalFederation, web: WebService, case_ref: str, case_study: str,
                 dup_ref: str) -> None:
        self.fed, self.web = fed, web
        self.case_ref, self.case_study, self.dup_ref = case_ref, case_study, dup_ref

    @property
    def home(self) -> Node:
        return self.fed.nodes[0]


def _svc(node: Node) -> SimilarityService:
    svc = node.service("similarity")
    assert isinstance(svc, SimilarityService)
    return svc


def _series_files(node: Node, series_uid: str) -> list[pydicom.Dataset]:
    out = [pydicom.dcmread(p) for p in sorted(node.cfg.objects_dir.rglob("*.dcm"))]
    return [ds for ds in out if ds.SeriesInstanceUID == series_uid]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    web = WebService()
    fed = await start_web_federation(tmp_path_factory.mktemp("websim") / "fed", NAMES,
                                     users=USERS, policies=POLICIES, web=web)
    try:
        home, city = fed.nodes[0], fed.nodes[1]
        rows = await home.store.fetchall("SELECT st.study_uid, se.series_uid FROM series se "
                                         "JOIN studies st ON st.id = se.study_id ORDER BY se.id")
        study_uid, series_uid = str(rows[0][0]), str(rows[0][1])
        case = _series_files(home, series_uid)
        dup = list(near_duplicate(case, np.random.default_rng(5), sigma=2.0))
        for ds in dup:
            await ingest_dataset(city.store, city.files, ds, publish_delay_s=0.2)
        await publish_all(city)
        await city.service("index-publisher").sync_now()  # type: ignore[union-attr]
        assertion = issue_assertion(city.identity, now=time.time(), user="dr-city",
                                    role="clinician", department="cardiology", purpose="treatment")
        await _svc(city).record_diagnosis(str(dup[0].SeriesInstanceUID), assertion,
                                          diagnosis=DIAGNOSIS)
        for node in fed.nodes:
            await _svc(node).index_now()
        uid_key = home.membership.secrets.uid_key  # type: ignore[union-attr]
        yield World(fed, web, keyed_uid(series_uid, uid_key), study_uid,
                    keyed_uid(str(dup[0].SeriesInstanceUID), uid_key))
    finally:
        await fed.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chromium() -> AsyncIterator[Any]:
    async with launch_chromium() as browser_:
        yield browser_


async def _login(chromium: Any, base: str, path: str) -> Any:
    context = await chromium.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    await page.goto(base + path.lstrip("/"))
    await page.fill("#username", "alice")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "**", timeout=60_000)
    return page


async def _drawn(viewer: Any, shot: Path) -> float:
    lit, _ = await wait_for_drawn_image(viewer, shot)
    return lit


async def test_find_similar_cases_open_a_match_and_record_a_diagnosis(
        world: World, chromium: Any) -> None:
    shots = artifacts_dir()
    base = world.web.url
    page = await _login(chromium, base, f"similar?series={world.case_ref}&top=5")
    await page.wait_for_selector("body[data-similar=done]", timeout=180_000)
    await page.screenshot(path=str(shots / "similar-results.png"), full_page=True)
    statuses = {await c.get_attribute("data-site"): await c.get_attribute("data-status")
                for c in await page.locator(".site-chip").all()}
    assert statuses == {"st-mary": "ok", "city-general": "ok", "north-clinic": "denied"}
    first = page.locator("tr.match-row").first
    assert await first.get_attribute("data-site") == "city-general"
    assert await first.get_attribute("data-ref") == world.dup_ref      # the planted copy
    diagnosis = await first.locator("td.diagnosis").inner_text()
    assert "cardiomyopathy" in diagnosis and "DUP0001" not in diagnosis  # de-identified
    assert world.case_ref not in {await r.get_attribute("data-ref")
                                  for r in await page.locator("tr.match-row").all()}

    async with page.expect_popup() as popup:                # the match in OHIF
        await first.locator("a[data-action=view-match]").click()
    viewer = await popup.value
    lit = await _drawn(viewer, shots / "similar-match-ohif.png")
    assert lit > 0.05, "OHIF drew no image of the match (see similar-match-ohif.png)"
    await viewer.close()

    await first.locator("input[name=match]").check()
    await page.fill("#diagnosis", "Hypertrophic cardiomyopathy")
    await page.click("#diagnosis-button")
    await page.wait_for_selector("#diagnosis-status.ok", timeout=60_000)
    record_id = await page.locator("#diagnosis-status").get_attribute("data-record")
    assert record_id
    home = world.home
    records = {r.record_id: r for r in await _svc(home).provenance_records()}
    assert records[record_id].kind == "diagnosis.record"
    report = await _svc(home).verify_provenance()
    assert report.ok, report.problems
    rows = await home.store.fetchall("SELECT diagnosis, matches, record_id FROM "
                                     "series_diagnosis_phi")
    mine = [r for r in rows if str(r[2]) == record_id]
    assert mine and str(mine[0][0]) == "Hypertrophic cardiomyopathy"
    assert world.dup_ref in str(mine[0][1])                # linked to the match used
    await page.context.close()


async def test_ohif_study_links_to_the_page_and_bad_input_is_refused(
        world: World, chromium: Any) -> None:
    base = world.web.url
    page = await _login(chromium, base, f"viewer?StudyInstanceUIDs={world.case_study}")
    link = page.locator("#medfed-similar-link")
    await link.wait_for(timeout=120_000)
    assert await link.get_attribute("href") == f"/similar?study={world.case_study}"
    await page.goto(base + f"similar?study={world.case_study}")
    assert await page.locator("#series").input_value() == world.case_ref
    await page.wait_for_selector("body[data-similar=done]", timeout=180_000)
    await page.goto(base + "similar?series=2.25.1")                   # not stored here
    await page.wait_for_selector("body[data-similar=failed]", timeout=60_000)
    assert "stored at this node" in await page.locator("#results").inner_text()
    await page.context.close()
