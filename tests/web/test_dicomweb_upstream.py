"""WADO-RS at a node fronting an existing PACS (a real Orthanc): instances the node knows
only from the metadata sync are retrieved from the PACS (C-GET into the scratch cache)
when asked for, byte for byte; QIDO lists them before; pins are released afterwards."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from node.config.model import UpstreamConfig
from node.datadir import make_private_dir
from node.node import Node
from node.synth.generate import generate
from node.testing.nodes import loopback_config
from tests.dicomweb_support import LoopThread, Served, serve
from tests.orthanc import Orthanc


@pytest.fixture(scope="module")
def fronting(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Served, Node, LoopThread, dict[str, pydicom.Dataset]]]:
    root = tmp_path_factory.mktemp("dw-upstream")
    files = generate(root / "pacs-data", patients=1, studies=1, series=2, slices=3,
                     rows=32, cols=32, seed=31).files
    sent = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}
    cfg = loopback_config(root / "node")
    with Orthanc({cfg.dicom.ae_title: ("127.0.0.1", 4242)}) as orthanc:
        orthanc.upload(files)
        upstream = UpstreamConfig(ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port,
                                  sync_interval_s=3600, cache_max_mb=64, timeout_s=10)
        cfg = dataclasses.replace(cfg, upstream=upstream)
        make_private_dir(cfg.data_dir)
        loop = LoopThread()
        node = Node(cfg, with_dicom=False)
        loop.call(node.start())
        try:
            assert node.upstream is not None
            loop.call(node.upstream.sync_once(full=True))
            counts = loop.call(node.store.counts())
            assert counts.instances == 6 and counts.bytes == 0   # metadata only, no files
            served = loop.call(serve(node))
            yield served, node, loop, sent
            loop.call(served.stop())
        finally:
            loop.call(node.stop())
            loop.close()


def _cached(node: Node, loop: LoopThread) -> int:
    rows = loop.call(node.store.fetchall(
        "SELECT count(*) FROM instances WHERE path LIKE 'cache/%'"))
    return int(rows[0][0])


def test_wado_retrieves_what_only_the_fronted_pacs_holds(fronting) -> None:  # type: ignore[no-untyped-def]
    served, node, loop, sent = fronting
    one = next(iter(sent.values()))
    client = served.client(local=True)
    listed = client.search_for_instances(one.StudyInstanceUID, one.SeriesInstanceUID)
    assert {i["00080018"]["Value"][0] for i in listed} == {
        u for u, d in sent.items() if d.SeriesInstanceUID == one.SeriesInstanceUID}

    series = client.retrieve_series(one.StudyInstanceUID, one.SeriesInstanceUID)
    assert len(series) == 3
    for ds in series:
        assert ds.PixelData == sent[str(ds.SOPInstanceUID)].PixelData
    assert _cached(node, loop) == 3

    metadata = served.client().retrieve_series_metadata(one.StudyInstanceUID,
                                                        one.SeriesInstanceUID)
    assert {m["00080018"]["Value"][0] for m in metadata} == {str(d.SOPInstanceUID) for d in series}
    frame = served.client().retrieve_instance_frames(
        one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID, frame_numbers=[1])
    assert frame[0] == sent[str(one.SOPInstanceUID)].PixelData

    study = served.client().retrieve_study(one.StudyInstanceUID)   # the other series too
    assert {str(d.SOPInstanceUID) for d in study} == set(sent)
    assert _cached(node, loop) == 6
    assert node.upstream.cache.pinned() == set(), "pins are released when the answer is sent"
    text = node.cfg.audit_path.read_text()
    assert '"action":"upstream.retrieve"' in text
