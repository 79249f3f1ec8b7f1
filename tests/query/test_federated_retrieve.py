"""A viewer C-GETs / C-MOVEs a federated result from its home node (dcmtk, real federation).

Four full nodes (mTLS peer API, DHT, SQLite, k=2 of n=3 key shares, 1 replica). A study
with planted PHI canaries is stored at "site", published and indexed; the viewer asks
the home node's FEDERATION AE title for it and must receive every instance,
de-identified, pixel data unchanged, with no scratch files left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.config.model import Destination
from node.deid.actions import keyed_uid
from node.node import Node
from node.query.dicom_retrieve import CACHE_DIR
from node.services import federated_services
from node.store.ingest_local import ingest_dataset
from node.synth.generate import iter_datasets
from node.synth.plan import PhiOverrides
from node.testing.federation import LocalFederation, start_federation
from tests.dicom_tools import DCMTK, free_port, wait_listening
from tests.query_support import audit_entries

CANARIES = ("QZXNAME^CANARY", "QZXPID4471", "19130517", "QZXACC9182", "QZX INSTITUTE OF CANARIES",
            "QZX FREE TEXT WHISPER", "QZX PRIVATE RECON NOTE")
PHI = PhiOverrides(patient_name=CANARIES[0], patient_id=CANARIES[1], birth_date=CANARIES[2],
                   accession=CANARIES[3], institution=CANARIES[4], image_comments=CANARIES[5],
                   private_text=CANARIES[6])


IDENTIFIED_FOR_HOME = {"rule": [{"name": "home clinicians", "site": ["home"], "role": "clinician",
                                  "purpose": "treatment", "level": "identified"}]}


def _configure(viewer_port: int, site_policy: dict | None):  # type: ignore[no-untyped-def]
    def configure(cfg):  # type: ignore[no-untyped-def]
        fed = replace(cfg.federation, shares_k=2, shares_n=3, replicas=1, repair_interval_s=0)
        dicom = replace(cfg.dicom, destinations=(Destination("VIEWER", "127.0.0.1", viewer_port),))
        cfg = replace(cfg, federation=fed, dicom=dicom)
        return replace(cfg, policy=site_policy) if site_policy and cfg.name == "site" else cfg
    return configure


async def _loaded_federation(tmp_path: Path, viewer_port: int = 0,
                             site_policy: dict | None = None  # type: ignore[type-arg]
                             ) -> tuple[LocalFederation, dict[str, Dataset]]:
    """Federation started; a 2-series study at "site" published and indexed.
    Returns the originals by SOP Instance UID."""
    fed = await start_federation(tmp_path, ["home", "site", "c", "d"], with_dicom=True,
                                 services=lambda i, name: federated_services(),
                                 configure=_configure(viewer_port or free_port(), site_policy))
    site = fed.by_name("site")
    originals: dict[str, Dataset] = {}
    for ds in iter_datasets(patients=1, studies=1, series=2, slices=4, rows=32, cols=32, phi=PHI):
        await ingest_dataset(site.store, site.files, ds)
        originals[str(ds.SOPInstanceUID)] = ds
    assert await site.service("publisher").run_due() == 2  # type: ignore[union-attr]
    for node in fed.nodes:
        await node.service("index-publisher").sync_now()  # type: ignore[union-attr]
    return fed, originals


async def _tool(tool: str, *args: str | int | Path) -> tuple[int, str]:
    """A dcmtk tool as a subprocess of this loop, so the federation keeps running."""
    proc = await asyncio.create_subprocess_exec(
        str(DCMTK / tool), *map(str, args), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, TCP_NODELAY="1"))
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return int(proc.returncode or 0), out.decode(errors="replace")


async def _federated_study(home: Node, out: Path) -> Dataset:
    out.mkdir()
    code, text = await _tool("findscu", "-S", "-aet", "FINDSCU", "-aec", "FEDERATION", "-X",
                             "-od", out, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                             "-k", "InstitutionName", "-k", "RetrieveAETitle", "127.0.0.1",
                             home.ports.dicom)
    assert code == 0, text
    (found,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert str(found.InstitutionName) == "site"
    return found


async def _getscu(home: Node, out: Path, *keys: str, called: str = "FEDERATION"
                  ) -> tuple[int, str]:
    out.mkdir()
    args: list[str] = []
    for key in keys:
        args += ["-k", key]
    return await _tool("getscu", "-S", "-aet", "GETSCU", "-aec", called, *args,
                       "-od", out, "127.0.0.1", home.ports.dicom)


def _assert_deidentified_copies(folder: Path, originals: dict[str, Dataset], uid_key: bytes,
                                want: set[str]) -> None:
    """Every wanted original arrived once, de-identified, pixels untouched, no canary."""
    by_keyed = {keyed_uid(uid, uid_key): ds for uid, ds in originals.items() if uid in want}
    files = [p for p in folder.iterdir() if p.is_file()]
    got = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}
    assert len(files) == len(want) and set(got) == set(by_keyed)
    for uid, ds in got.items():
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PixelData == by_keyed[uid].PixelData
        assert str(ds.PatientID) != str(by_keyed[uid].PatientID)
    for path in files:
        data = path.read_bytes()
        assert not [c for c in CANARIES if c.encode() in data], path


def _cache_empty(node: Node) -> bool:
    cache = node.cfg.data_dir / CACHE_DIR
    return not cache.exists() or not any(cache.iterdir())


async def test_getscu_study_and_series_from_the_federation_ae(tmp_path: Path) -> None:
    fed, originals = await _loaded_federation(tmp_path)
    try:
        home, site = fed.by_name("home"), fed.by_name("site")
        uid_key = home.membership.secrets.uid_key  # type: ignore[union-attr]
        found = await _federated_study(home, tmp_path / "find")
        study = str(found.StudyInstanceUID)
        real_study = str(next(iter(originals.values())).StudyInstanceUID)
        assert study == keyed_uid(real_study, uid_key) != real_study

        code, text = await _getscu(home, tmp_path / "study", "QueryRetrieveLevel=STUDY",
                                   f"StudyInstanceUID={study}")
        assert code == 0, text
        _assert_deidentified_copies(tmp_path / "study", originals, uid_key, set(originals))
        assert _cache_empty(home)

        one = next(iter(originals.values()))
        series = keyed_uid(str(one.SeriesInstanceUID), uid_key)
        code, text = await _getscu(home, tmp_path / "series", "QueryRetrieveLevel=SERIES",
                                   f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}")
        assert code == 0, text
        want = {u for u, ds in originals.items() if ds.SeriesInstanceUID == one.SeriesInstanceUID}
        assert len(want) == 4
        _assert_deidentified_copies(tmp_path / "series", originals, uid_key, want)
        assert _cache_empty(home)

        # the site's own AE title still serves its own originals, identified
        (tmp_path / "local").mkdir()
        code, text = await _tool("getscu", "-S", "-aet", "GETSCU", "-aec", site.cfg.dicom.ae_title,
                                 "-k", "QueryRetrieveLevel=STUDY",
                                 "-k", f"StudyInstanceUID={real_study}", "-od", tmp_path / "local",
                                 "127.0.0.1", site.ports.dicom)
        assert code == 0, text
        local = [pydicom.dcmread(p) for p in (tmp_path / "local").iterdir()]
        assert {str(ds.SOPInstanceUID) for ds in local} == set(originals)
        assert all(str(ds.PatientName) == CANARIES[0] for ds in local)
    finally:
        await fed.stop()


async def test_a_viewer_that_follows_the_retrieve_ae_title_gets_the_images(
        tmp_path: Path) -> None:
    """The C-FIND result's RetrieveAETitle is one the home node answers; C-GET there (and
    to the home node's own AE title) sends the study, never "Success" with nothing."""
    fed, originals = await _loaded_federation(tmp_path)
    try:
        home = fed.by_name("home")
        uid_key = home.membership.secrets.uid_key  # type: ignore[union-attr]
        found = await _federated_study(home, tmp_path / "find")
        advertised = str(found.RetrieveAETitle)
        assert advertised in (home.cfg.dicom.ae_title, home.cfg.dicom.federation_ae_title)
        study = f"StudyInstanceUID={found.StudyInstanceUID}"
        code, text = await _getscu(home, tmp_path / "advertised", "QueryRetrieveLevel=STUDY",
                                   study, called=advertised)
        assert code == 0, text
        _assert_deidentified_copies(tmp_path / "advertised", originals, uid_key, set(originals))
        code, text = await _getscu(home, tmp_path / "own", "QueryRetrieveLevel=STUDY", study,
                                   called=home.cfg.dicom.ae_title)
        assert code == 0, text
        _assert_deidentified_copies(tmp_path / "own", originals, uid_key, set(originals))
        assert _cache_empty(home)
    finally:
        await fed.stop()


async def test_federation_ae_bad_requests_get_clear_answers(tmp_path: Path) -> None:
    fed, originals = await _loaded_federation(tmp_path)
    try:
        home = fed.by_name("home")
        # IMAGE level is refused with a reason, not a crash
        code, text = await _getscu(home, tmp_path / "image", "QueryRetrieveLevel=IMAGE",
                                   "StudyInstanceUID=1.2.3", "SeriesInstanceUID=1.2.3.4",
                                   "SOPInstanceUID=1.2.3.4.5")
        assert "DataSetDoesNotMatchSOPClass" in text, text  # 0xA900, with the reason audited
        (refused,) = [e for e in audit_entries(home, "dicom.get") if e["outcome"] == "failed"]
        assert "STUDY or SERIES level only" in json.dumps(refused)
        assert not any((tmp_path / "image").iterdir())
        # a UID no site holds: nothing to send, nothing fetched or cached
        code, text = await _getscu(home, tmp_path / "none", "QueryRetrieveLevel=STUDY",
                                   "StudyInstanceUID=2.25.1234567")
        assert code == 0, text
        assert not any((tmp_path / "none").iterdir()) and _cache_empty(home)
        # the real (unkeyed) study UID is not what the federation answers: nothing sent
        real = str(next(iter(originals.values())).StudyInstanceUID)
        code, text = await _getscu(home, tmp_path / "real", "QueryRetrieveLevel=STUDY",
                                   f"StudyInstanceUID={real}")
        assert code == 0 and not any((tmp_path / "real").iterdir()), text
    finally:
        await fed.stop()


async def test_identified_when_the_owner_policy_releases_it(tmp_path: Path) -> None:
    fed, originals = await _loaded_federation(tmp_path, site_policy=IDENTIFIED_FOR_HOME)
    try:
        home = fed.by_name("home")
        found = await _federated_study(home, tmp_path / "find")
        real_study = str(next(iter(originals.values())).StudyInstanceUID)
        assert str(found.StudyInstanceUID) == real_study  # identified C-FIND answer
        code, text = await _getscu(home, tmp_path / "study", "QueryRetrieveLevel=STUDY",
                                   f"StudyInstanceUID={real_study}")
        assert code == 0, text
        got = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread,
                                                        (tmp_path / "study").iterdir())}
        assert set(got) == set(originals)
        for uid, ds in got.items():
            assert str(ds.PatientName) == CANARIES[0] and str(ds.PatientID) == CANARIES[1]
            assert ds.PixelData == originals[uid].PixelData
        assert _cache_empty(home)
    finally:
        await fed.stop()


async def test_cmove_to_a_configured_viewer(tmp_path: Path) -> None:
    viewer_port = free_port()
    fed, originals = await _loaded_federation(tmp_path, viewer_port)
    viewer = tmp_path / "viewer"
    viewer.mkdir()
    scp = await asyncio.create_subprocess_exec(
        str(DCMTK / "storescp"), "-aet", "VIEWER", "-od", str(viewer), str(viewer_port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        home = fed.by_name("home")
        uid_key = home.membership.secrets.uid_key  # type: ignore[union-attr]
        study = str((await _federated_study(home, tmp_path / "find")).StudyInstanceUID)
        await asyncio.to_thread(wait_listening, viewer_port)
        code, text = await _tool("movescu", "-S", "-aet", "MOVESCU", "-aec", "FEDERATION",
                                 "-aem", "VIEWER", "-k", "QueryRetrieveLevel=STUDY",
                                 "-k", f"StudyInstanceUID={study}", "127.0.0.1", home.ports.dicom)
        assert code == 0, text
        _assert_deidentified_copies(viewer, originals, uid_key, set(originals))
        assert _cache_empty(home)
    finally:
        scp.terminate()
        await scp.wait()
        await fed.stop()
