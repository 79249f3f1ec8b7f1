"""DICOMweb at the home node across a real in-process federation (dicomweb-client).

Four full nodes (mTLS peer API, DHT, SQLite, k=2 of n=3 key shares, 1 replica). A study
with planted PHI canaries is stored and published at "site", another one at "home".
QIDO-RS at home lists both, each tagged with its site; WADO-RS of the remote series
delivers the same pixel data, decrypted in the home node's memory only; with the owner
down, the series still comes (replica + key shares) and the search says who is missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom.dataset import Dataset

from node.deid.actions import keyed_uid
from node.node import Node
from node.services import federated_services
from node.store.ingest_local import ingest_dataset
from node.synth.generate import iter_datasets
from node.synth.plan import PhiOverrides
from node.testing.federation import LocalFederation, start_federation
from tests.dicomweb_support import LoopThread, Served, serve

CANARIES = ("QZXNAME^WEBCANARY", "QZXPID5521", "19140212", "QZXACC7713")
PHI = PhiOverrides(patient_name=CANARIES[0], patient_id=CANARIES[1], birth_date=CANARIES[2],
                   accession=CANARIES[3])


def _configure(cfg):  # type: ignore[no-untyped-def]
    fed = dataclasses.replace(cfg.federation, shares_k=2, shares_n=3, replicas=1,
                              repair_interval_s=0, query_deadline_s=6.0)
    return dataclasses.replace(cfg, federation=fed)


async def _start(tmp: Path) -> tuple[LocalFederation, list[Dataset], list[Dataset]]:
    fed = await start_federation(tmp, ["home", "site", "c", "d"],
                                 services=lambda i, name: federated_services(),
                                 configure=_configure)
    site, home = fed.by_name("site"), fed.by_name("home")
    remote = list(iter_datasets(patients=1, studies=1, series=2, slices=3, rows=32, cols=32,
                                phi=PHI, seed=5))
    for ds in remote:
        await ingest_dataset(site.store, site.files, ds)
    local = list(iter_datasets(patients=1, studies=1, series=1, slices=2, rows=16, cols=16,
                               seed=6, patient_offset=20))
    for ds in local:
        await ingest_dataset(home.store, home.files, ds)
    assert await site.service("publisher").run_due() == 2  # type: ignore[union-attr]
    for node in fed.nodes:
        await node.service("index-publisher").sync_now()  # type: ignore[union-attr]
    return fed, remote, local


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[LocalFederation, Served, list[Dataset], list[Dataset], LoopThread]]:
    loop = LoopThread()
    fed, remote, local = loop.call(_start(tmp_path_factory.mktemp("dwfed")), timeout=240)
    served = loop.call(serve(fed.by_name("home")))
    yield fed, served, remote, local, loop
    loop.call(served.runner.cleanup())
    loop.call(fed.stop())
    loop.close()


def _uid_key(node: Node) -> bytes:
    assert node.membership is not None
    return node.membership.secrets.uid_key


def _value(item: dict, tag: str) -> object:  # type: ignore[type-arg]
    return item[tag]["Value"][0]


def test_federated_qido_tags_each_site(federation) -> None:  # type: ignore[no-untyped-def]
    fed, served, remote, local, _loop = federation
    home, site = fed.by_name("home"), fed.by_name("site")
    auth = served.auth()
    r = requests.get(served.url + "/studies", headers=auth, timeout=60)
    assert r.status_code == 200
    studies = r.json()
    keyed = keyed_uid(remote[0].StudyInstanceUID, _uid_key(home))
    by_uid = {_value(s, "0020000D"): s for s in studies}
    assert set(by_uid) == {keyed, local[0].StudyInstanceUID}
    assert _value(by_uid[keyed], "00080054") == site.cfg.dicom.ae_title
    assert _value(by_uid[keyed], "00080080") == "site"
    assert _value(by_uid[local[0].StudyInstanceUID], "00080054") == home.cfg.dicom.ae_title
    assert _value(by_uid[local[0].StudyInstanceUID], "00080080") == "home"
    assert not [c for c in CANARIES if c in r.text]          # de-identified by site's policy
    assert r.headers["X-Medfed-Sites"] == "ok=4"
    status = requests.get(served.url + "/searches/" + r.headers["X-Medfed-Search"],
                          headers=auth, timeout=30).json()
    assert sorted(s["site"] for s in status["sites"]) == ["c", "d", "home", "site"]
    assert status["partial"] is False and all(s["status"] == "ok" for s in status["sites"])
    other = requests.get(served.url + "/searches/" + r.headers["X-Medfed-Search"],
                         headers=served.auth(served.other_token), timeout=30)
    assert other.status_code == 404                        # another user's search stays theirs
    local_only = served.client(local=True).search_for_studies()
    assert [_value(s, "0020000D") for s in local_only] == [local[0].StudyInstanceUID]
    ct = served.client().search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert ct == []
    # the pseudonym a de-identified row shows finds that patient's studies (OHIF's Studies
    # panel asks with the tag number, as here)
    psn = _value(by_uid[keyed], "00100020")
    assert psn.startswith("PSN-")
    same = requests.get(served.url + "/studies", params={"00100020": psn}, headers=auth,
                        timeout=60).json()
    assert keyed in {_value(s, "0020000D") for s in same}
    assert {_value(s, "00100020") for s in same} == {psn}


def test_remote_series_byte_identical_and_memory_only(federation) -> None:  # type: ignore[no-untyped-def]
    fed, served, remote, _local, _loop = federation
    home = fed.by_name("home")
    key = _uid_key(home)
    study = keyed_uid(remote[0].StudyInstanceUID, key)
    client = served.client()
    series = client.search_for_series(study)
    want_series = {keyed_uid(d.SeriesInstanceUID, key) for d in remote}
    assert {_value(s, "0020000E") for s in series} == want_series
    assert all(_value(s, "00080080") == "site" for s in series)
    one = remote[0]
    series_uid = keyed_uid(one.SeriesInstanceUID, key)
    got = client.retrieve_series(study, series_uid)
    originals = {keyed_uid(d.SOPInstanceUID, key): d for d in remote
                 if d.SeriesInstanceUID == one.SeriesInstanceUID}
    assert {str(d.SOPInstanceUID) for d in got} == set(originals)
    for ds in got:
        assert ds.PixelData == originals[str(ds.SOPInstanceUID)].PixelData
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientID) != CANARIES[1]
    metadata = client.retrieve_series_metadata(study, series_uid)
    assert len(metadata) == len(originals)
    first = metadata[0]
    sop = _value(first, "00080018")
    assert client.retrieve_bulkdata(first["7FE00010"]["BulkDataURI"]) == [originals[sop].PixelData]
    assert client.retrieve_instance_frames(study, series_uid, sop, [1]) == [originals[sop].PixelData]
    png = client.retrieve_instance_rendered(study, series_uid, sop, media_types=("image/png",))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    listed = client.search_for_instances(study, series_uid)      # from the fetched series
    assert {_value(i, "00080018") for i in listed} == set(originals)
    assert all(_value(i, "00080080") == "site" for i in listed)
    whole_study = client.retrieve_study(study)
    assert len(whole_study) == len(remote)
    # nothing decrypted was written to the home node's disk
    probe = originals[sop].PixelData[200:264]
    for path in home.cfg.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert probe not in data, path
            assert not [c for c in CANARIES if c.encode() in data], path
    fetched = [e for e in home.cfg.audit_path.read_text().splitlines() if "series.fetched" in e]
    assert fetched


def test_owner_down_replica_path_and_partial_search(federation) -> None:  # type: ignore[no-untyped-def]
    fed, served, remote, _local, loop = federation
    home, site = fed.by_name("home"), fed.by_name("site")
    key = _uid_key(home)
    study = keyed_uid(remote[0].StudyInstanceUID, key)
    last = remote[-1]
    series_uid = keyed_uid(last.SeriesInstanceUID, key)
    bob = served.client(served.other_token)
    assert bob.search_for_series(study)              # bob learns of the series while site is up
    loop.call(site.stop())
    fed.down.add(fed.nodes.index(site))
    r = requests.get(served.url + "/studies", headers=served.auth(served.other_token),
                     timeout=60)
    assert r.status_code == 200
    assert "unreachable=1" in r.headers["X-Medfed-Sites"] or "timeout=1" in r.headers["X-Medfed-Sites"]
    status = requests.get(served.url + "/searches/" + r.headers["X-Medfed-Search"],
                          headers=served.auth(served.other_token), timeout=30).json()
    assert status["partial"] is True
    assert {s["site"] for s in status["sites"] if s["status"] != "ok"} == {"site"}, status["sites"]
    got = bob.retrieve_series(study, series_uid)      # not in bob's cache: replica + shares
    want = {keyed_uid(d.SOPInstanceUID, key): d.PixelData for d in remote
            if d.SeriesInstanceUID == last.SeriesInstanceUID}
    assert {str(d.SOPInstanceUID): d.PixelData for d in got} == want
