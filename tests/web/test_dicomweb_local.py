"""DICOMweb against one node's own store, driven by dicomweb-client (real HTTP, loopback).

Two synthetic CT patients (2 series of 4 slices each) are ingested; every answer is
checked against the datasets that went in: pixel data byte for byte, metadata attribute
for attribute, frames and bulk data, rendered frames decoded back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset

from node.datadir import make_private_dir
from node.node import Node
from node.store.ingest_local import encode_part10, ingest_dataset
from node.synth.generate import iter_datasets
from node.testing.nodes import loopback_config
from tests.dicomweb_support import LoopThread, Served, serve


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, list[Dataset], Node]]:
    loop = LoopThread()
    data_dir = tmp_path_factory.mktemp("dw") / "node"
    make_private_dir(data_dir)                     # the node refuses a folder open to others
    node = Node(loopback_config(data_dir, name="Alpha Hospital", ae_title="ALPHA"),
                with_dicom=False)
    loop.call(node.start())
    originals = list(iter_datasets(patients=2, studies=1, series=2, slices=4, rows=32, cols=32))
    for ds in originals:
        loop.call(ingest_dataset(node.store, node.files, ds))
    served = loop.call(serve(node))
    yield served, originals, node
    loop.call(served.runner.cleanup())
    loop.call(node.stop())
    loop.close()


def _series(originals: list[Dataset], n: int = 0) -> list[Dataset]:
    first = originals[n]
    return [d for d in originals if d.SeriesInstanceUID == first.SeriesInstanceUID]


def _audit(node: Node, action: str) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in map(json.loads, node.cfg.audit_path.read_text().splitlines())
            if e["action"] == action]


def test_qido_filters(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, _node = site
    client = served.client()
    studies = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {d.StudyInstanceUID for d in originals}
    for s in studies:   # tagged with the site that holds it
        assert s["00080054"]["Value"] == ["ALPHA"]
        assert s["00080080"]["Value"] == ["Alpha Hospital"]
    one = originals[0]
    by_patient = client.search_for_studies(search_filters={"PatientID": one.PatientID})
    assert [s["0020000D"]["Value"][0] for s in by_patient] == [one.StudyInstanceUID]
    assert by_patient[0]["00100010"]["Value"][0]["Alphabetic"] == str(one.PatientName)
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    dated = client.search_for_studies(search_filters={"StudyDate": f"{one.StudyDate}-{one.StudyDate}"})
    assert one.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in dated}
    assert len(client.search_for_studies(limit=1)) == 1
    paged = client.search_for_studies(offset=1)
    assert len(paged) == len(studies) - 1
    series = client.search_for_series(one.StudyInstanceUID, search_filters={"Modality": "CT"})
    assert {s["0020000E"]["Value"][0] for s in series} == {
        d.SeriesInstanceUID for d in originals if d.StudyInstanceUID == one.StudyInstanceUID}
    assert client.search_for_series(one.StudyInstanceUID, search_filters={"Modality": "MR"}) == []
    instances = client.search_for_instances(one.StudyInstanceUID, one.SeriesInstanceUID,
                                            fields=["Rows"])
    assert {i["00080018"]["Value"][0] for i in instances} == {
        d.SOPInstanceUID for d in _series(originals)}
    assert all(i["00280010"]["Value"] == [32] for i in instances)


def test_qido_bad_query_is_refused_with_reason(site: tuple[Served, list[Dataset], Node]) -> None:
    served, _originals, _node = site
    headers = served.auth()
    r = requests.get(served.url + "/studies?NoSuchKeyword=1", headers=headers, timeout=30)
    assert r.status_code == 400 and "NoSuchKeyword" in r.text
    r = requests.get(served.url + "/studies?limit=0", headers=headers, timeout=30)
    assert r.status_code == 400 and "limit" in r.text


def test_nothing_without_login(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, _node = site
    one = originals[0]
    for path in ("/studies", f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}",
                 f"/studies/{one.StudyInstanceUID}/metadata", "/local/studies"):
        for headers in ({}, {"Authorization": "Bearer mft_wrong"}):
            r = requests.get(served.url + path, headers=headers, timeout=30)
            assert r.status_code == 401, path
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert one.PatientID not in r.text
    r = requests.post(served.url + "/studies", data=b"", timeout=30)
    assert r.status_code == 401


def test_path_traversal_in_uids_refused(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, _node = site
    one = originals[0]
    headers = served.auth()
    for bad in ("..", "..%2F..%2Fetc", "1.2.3%2F..%2F..", "1.2.3;rm", "%2e%2e", "1" * 65):
        for path in (f"/studies/{bad}/metadata",
                     f"/studies/{one.StudyInstanceUID}/series/{bad}",
                     f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
                     f"/instances/{bad}/frames/1"):
            r = requests.get(served.url + path, headers=headers, timeout=30)
            assert r.status_code in (400, 404), (bad, path, r.status_code)
            assert "root:" not in r.text and "PRIVATE KEY" not in r.text


def test_wado_series_is_byte_identical(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, node = site
    one = originals[0]
    got = served.client().retrieve_series(one.StudyInstanceUID, one.SeriesInstanceUID)
    want = {d.SOPInstanceUID: d for d in _series(originals)}
    assert sorted(d.SOPInstanceUID for d in got) == sorted(want)
    for ds in got:
        assert ds.PixelData == want[ds.SOPInstanceUID].PixelData
    # the stream is the stored file itself, not a re-encoding
    stored = node.files.root
    raw = requests.get(f"{served.url}/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
                       f"/instances/{one.SOPInstanceUID}",
                       headers={**served.auth(), "Accept": "application/dicom"},
                       timeout=30)
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "application/dicom"
    files = list(stored.rglob(f"{one.SOPInstanceUID}.dcm"))
    assert len(files) == 1 and files[0].read_bytes() == raw.content
    study = served.client().retrieve_study(one.StudyInstanceUID)
    assert {d.SeriesInstanceUID for d in study} == {
        d.SeriesInstanceUID for d in originals if d.StudyInstanceUID == one.StudyInstanceUID}
    assert _audit(node, "dicomweb.retrieve")


def test_metadata_matches_instances(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, _node = site
    one = originals[0]
    client = served.client()
    metadata = client.retrieve_series_metadata(one.StudyInstanceUID, one.SeriesInstanceUID)
    want = {d.SOPInstanceUID: d for d in _series(originals)}
    assert len(metadata) == len(want)
    for item in metadata:
        ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
        original = want[ds.SOPInstanceUID]
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID",
                        "Rows", "Columns", "BitsAllocated", "InstanceNumber",
                        "ImagePositionPatient", "PixelSpacing", "WindowCenter", "Modality"):
            assert ds.get(keyword) == original.get(keyword), keyword
        pixel = item["7FE00010"]
        assert "InlineBinary" not in pixel
        uri = pixel["BulkDataURI"]
        assert uri.startswith(served.url + "/studies/")   # configured base, not the Host header
        assert client.retrieve_bulkdata(uri) == [original.PixelData]
    again = client.retrieve_series_metadata(one.StudyInstanceUID, one.SeriesInstanceUID)
    assert again == metadata          # the cached answer is the same answer
    single = client.retrieve_instance_metadata(one.StudyInstanceUID, one.SeriesInstanceUID,
                                               one.SOPInstanceUID)
    assert Dataset.from_json(single, bulk_data_uri_handler=lambda *_: b"").SOPInstanceUID == one.SOPInstanceUID


def test_bulk_data_uris_ignore_the_host_header(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, _node = site
    one = originals[0]
    r = requests.get(f"{served.url}/studies/{one.StudyInstanceUID}/metadata",
                     headers={**served.auth(), "Host": "evil.example"},
                     timeout=30)
    assert r.status_code == 200 and "evil.example" not in r.text
    assert f"http://127.0.0.1:{served.port}/dicomweb/studies/" in r.text


def test_frames_and_octet_stream(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, _node = site
    one = originals[1]
    frames = served.client().retrieve_instance_frames(
        one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID, [1])
    assert frames == [one.PixelData]
    url = (f"{served.url}/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
           f"/instances/{one.SOPInstanceUID}")
    auth = served.auth()
    raw = requests.get(url + "/frames/1", headers={**auth, "Accept": "application/octet-stream"},
                       timeout=30)
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "application/octet-stream"
    assert raw.content == one.PixelData
    bulk = requests.get(url + "/bulk/7FE00010",
                        headers={**auth, "Accept": "application/octet-stream"}, timeout=30)
    assert bulk.content == one.PixelData
    assert requests.get(url + "/frames/2", headers=auth, timeout=30).status_code == 404
    assert requests.get(url + "/frames/x", headers=auth, timeout=30).status_code == 400
    refused = requests.get(url + "/frames/1", headers={**auth, "Accept": "image/gif"}, timeout=30)
    assert refused.status_code == 406


def test_rendered_frames(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, _node = site
    one = originals[2]
    client = served.client()
    png = client.retrieve_instance_rendered(one.StudyInstanceUID, one.SeriesInstanceUID,
                                            one.SOPInstanceUID, media_types=("image/png",))
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (32, 32)
    hu = one.pixel_array.astype(float) * float(one.RescaleSlope) + float(one.RescaleIntercept)
    center, width = float(hu.mean()), 1.0          # a 1-HU window: a threshold at the mean
    url = (f"{served.url}/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
           f"/instances/{one.SOPInstanceUID}/frames/1/rendered")
    r = requests.get(url, params={"window": f"{center},{width},linear"},
                     headers={**served.auth(), "Accept": "image/png"}, timeout=30)
    thresholded = np.asarray(Image.open(io.BytesIO(r.content)))
    assert ((thresholded > 127) == (hu > center)).mean() > 0.99
    jpeg = client.retrieve_instance_frames_rendered(
        one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID, [1],
        media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    bad = requests.get(url, params={"window": "40,-1"},
                       headers=served.auth(), timeout=30)
    assert bad.status_code == 400 and "width" in bad.text


def _stow(served: Served, parts: list[bytes], *, part_type: str = "application/dicom",
          content_type: str | None = None, study: str = "") -> requests.Response:
    boundary = "b0undary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode()
                    + b"\r\n\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    ctype = content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(served.url + "/studies" + (f"/{study}" if study else ""), data=body,
                         headers={**served.auth(), "Content-Type": ctype},
                         timeout=60)


def test_stow_stores_like_c_store(site: tuple[Served, list[Dataset], Node]) -> None:
    served, _originals, node = site
    new = list(iter_datasets(patients=1, studies=1, series=1, slices=2, rows=16, cols=16,
                             seed=77, patient_offset=50))
    answer = served.client().store_instances(new)
    stored = answer.ReferencedSOPSequence
    assert {i.ReferencedSOPInstanceUID for i in stored} == {d.SOPInstanceUID for d in new}
    assert "FailedSOPSequence" not in answer
    found = served.client().search_for_instances(new[0].StudyInstanceUID)
    assert {i["00080018"]["Value"][0] for i in found} == {d.SOPInstanceUID for d in new}
    back = served.client().retrieve_instance(new[0].StudyInstanceUID, new[0].SeriesInstanceUID,
                                             new[0].SOPInstanceUID)
    assert back.PixelData == new[0].PixelData
    assert any(e["outcome"] == "ok" and e["detail"]["stored"] == 2
               for e in _audit(node, "dicomweb.store"))


def test_stow_refuses_bad_input_with_reason(site: tuple[Served, list[Dataset], Node]) -> None:
    served, originals, node = site
    before = len(list(node.files.root.rglob("*.dcm")))
    garbage = _stow(served, [b"this is not DICOM at all"])
    assert garbage.status_code == 409
    failed = Dataset.from_json(garbage.json()).FailedSOPSequence
    assert failed[0].FailureReason == 0xC000
    # pixel data shorter than Rows x Columns x BitsAllocated: the C-STORE validator refuses it
    short = next(iter_datasets(patients=1, studies=1, series=1, slices=1, rows=16, cols=16,
                               seed=91, patient_offset=70))
    short.PixelData = short.PixelData[:100]
    refused = _stow(served, [encode_part10(short)])
    assert refused.status_code == 409
    reason = Dataset.from_json(refused.json()).FailedSOPSequence[0]
    assert reason.ReferencedSOPInstanceUID == short.SOPInstanceUID
    assert reason.FailureReason != 0
    # one good, one bad: 202 with both lists
    good = next(iter_datasets(patients=1, studies=1, series=1, slices=1, rows=16, cols=16,
                              seed=92, patient_offset=80))
    mixed = _stow(served, [encode_part10(good), b"junk"])
    assert mixed.status_code == 202
    doc = Dataset.from_json(mixed.json())
    assert len(doc.ReferencedSOPSequence) == 1 and len(doc.FailedSOPSequence) == 1
    # an instance of another study than the URL names
    other = _stow(served, [encode_part10(originals[0])], study="1.2.3.4")
    assert other.status_code == 409
    assert Dataset.from_json(other.json()).FailedSOPSequence[0].FailureReason == 0xA900
    wrong_type = _stow(served, [b"{}"], content_type="application/json")
    assert wrong_type.status_code == 415
    truncated = requests.post(served.url + "/studies", data=b"--xx\r\nContent-Type: appl",
                              headers={**served.auth(),
                                       "Content-Type": 'multipart/related; type="application/dicom"; boundary=xx'},
                              timeout=30)
    assert truncated.status_code == 400
    after = len(list(node.files.root.rglob("*.dcm")))
    assert after == before + 1                       # only the good one
    assert not list(Path(node.files.root).rglob(".tmp-*"))
    outcomes = {e["outcome"] for e in _audit(node, "dicomweb.store")}
    assert {"failed", "partial", "refused"} <= outcomes
    for entry in _audit(node, "dicomweb.store"):     # no PHI in the audit trail
        assert short.PatientID not in json.dumps(entry)
