"""Series metadata is made when instances arrive and kept on disk (first request = later ones).

STOW-RS converts what it stores at once; instances stored another way (the C-STORE
path's ingest) are converted by the sweeper. A fresh DICOMweb app on the same node
(a restart) answers a series' metadata without converting any header: the converter
is made to fail, and the answer is still the one made before.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset

from node.datadir import make_private_dir
from node.node import Node
from node.store.ingest_local import ingest_dataset
from node.synth.generate import iter_datasets
from node.testing.nodes import loopback_config
from node.web.dicomweb import metadata as metadata_module
from node.web.dicomweb.metadata_store import FILE, pause_before_sweep
from tests.dicomweb_support import LoopThread, Served, serve


@pytest.fixture()
def site(tmp_path) -> Iterator[tuple[LoopThread, Node]]:  # type: ignore[no-untyped-def]
    loop = LoopThread()
    data_dir = tmp_path / "node"
    make_private_dir(data_dir)
    node = Node(loopback_config(data_dir, name="Alpha Hospital", ae_title="ALPHA"),
                with_dicom=False)
    loop.call(node.start())
    yield loop, node
    loop.call(node.stop())
    loop.close()


def _stored(node: Node) -> dict[str, str]:
    path = node.cfg.data_dir / "web" / FILE
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT sop_uid, doc FROM instance_metadata"))


def _uris(metadata: list[dict]) -> set[str]:  # type: ignore[type-arg]
    return {m["7FE00010"]["BulkDataURI"] for m in metadata}


def test_stow_and_c_store_make_metadata_ahead_and_it_survives_a_restart(
        site: tuple[LoopThread, Node], monkeypatch: pytest.MonkeyPatch) -> None:
    loop, node = site
    served: Served = loop.call(serve(node))
    stowed = list(iter_datasets(patients=1, studies=1, series=1, slices=3, rows=16, cols=16,
                                seed=5))
    served.client().store_instances(stowed)
    docs = _stored(node)
    assert {d.SOPInstanceUID for d in stowed} <= set(docs)     # before any metadata request
    assert all('"BulkDataURI":"/studies/' in doc for doc in docs.values())   # no base stored
    assert (node.cfg.data_dir / "web" / FILE).stat().st_mode & 0o077 == 0

    stored = list(iter_datasets(patients=1, studies=1, series=1, slices=2, rows=16, cols=16,
                                seed=6, patient_offset=20))
    for ds in stored:                                   # the C-STORE path (no STOW)
        loop.call(ingest_dataset(node.store, node.files, ds))
    assert served.ctx.sweeper is not None
    while loop.call(served.ctx.sweeper.run_once()):
        pass
    assert {d.SOPInstanceUID for d in stored} <= set(_stored(node))

    client = served.client()
    first = {s[0].SeriesInstanceUID: client.retrieve_series_metadata(s[0].StudyInstanceUID,
                                                                    s[0].SeriesInstanceUID)
             for s in (stowed, stored)}
    old_url = served.url
    loop.call(served.stop())

    def no_conversion(*_a: object, **_k: object) -> str:
        raise AssertionError("a header was converted although its metadata was on disk")
    monkeypatch.setattr(metadata_module, "metadata_json", no_conversion)
    again: Served = loop.call(serve(node))          # a restarted web app: empty memory cache
    try:
        for series in (stowed, stored):
            uid = series[0].SeriesInstanceUID
            answer = again.client().retrieve_series_metadata(series[0].StudyInstanceUID, uid)
            assert len(answer) == len(series)
            want = {d.SOPInstanceUID: d for d in series}
            for item in answer:
                ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
                assert ds.PatientID == want[ds.SOPInstanceUID].PatientID
            # the base in front is today's address, not the one the documents were made under
            assert {u.replace(again.url, old_url, 1) for u in _uris(answer)} == _uris(first[uid])
            assert all(u.startswith(again.url + "/studies/") for u in _uris(answer))
            pixels = again.client().retrieve_bulkdata(answer[0]["7FE00010"]["BulkDataURI"])
            assert pixels == [want[answer[0]["00080018"]["Value"][0]].PixelData]
    finally:
        loop.call(again.stop())


def test_a_pass_waits_for_a_burst_of_instances_to_end_but_not_forever() -> None:
    wait = functools.partial(pause_before_sweep, idle_s=1.0, max_defer_s=30.0)
    assert wait(100.0, 0.0, 0.0) == 0.0          # nothing received lately: sweep now
    assert wait(100.0, 99.75, 0.0) == 0.75       # one came 0.25 s ago: until 1 s of quiet
    assert wait(100.0, 100.0, 29.5) == 0.5       # a steady stream: 30 s behind at most
    assert wait(100.0, 100.0, 30.0) == 0.0
