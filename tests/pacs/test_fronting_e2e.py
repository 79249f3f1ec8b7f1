"""A node fronting a real Orthanc: a viewer asks the node, the node fetches from the PACS."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom

from node.config.model import UpstreamConfig
from node.synth.generate import generate
from node.testing.nodes import NodeThread, loopback_config
from tests.dicom_tools import dcmtk
from tests.orthanc import Orthanc


def test_viewer_gets_a_study_only_the_upstream_pacs_holds(tmp_path: Path) -> None:
    files = generate(tmp_path / "pacs-data", patients=1, studies=1, series=2, slices=3,
                     rows=32, cols=32, seed=21).files
    sent = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    with Orthanc({"MEDFED": ("127.0.0.1", 4242)}) as orthanc:
        orthanc.upload(files)
        upstream = UpstreamConfig(ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port,
                                  sync_interval_s=3600, cache_max_mb=64, timeout_s=10)
        cfg = dataclasses.replace(loopback_config(tmp_path / "node"), upstream=upstream)
        with NodeThread(cfg) as node:
            # (The node also syncs by itself at start; a full pass makes the test exact.)
            report = node.call(node.node.upstream.sync_once(full=True))
            assert report.studies_seen == 1
            counts = node.call(node.node.store.counts())
            assert counts.instances == 6 and counts.bytes == 0  # metadata only, no files
            study = next(iter(sent.values())).StudyInstanceUID
            out = tmp_path / "viewer"
            out.mkdir()
            proc = dcmtk("getscu", "-aet", "GETSCU", "-aec", "MEDFED", "-S",
                         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                         "-od", out, "127.0.0.1", node.dicom_port)
            assert proc.returncode == 0, proc.stderr
            got = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, out.iterdir())}
            assert set(got) == set(sent)
            assert all(got[u].PixelData == sent[u].PixelData for u in got)
            cached = node.call(node.node.store.fetchall(
                "SELECT count(*) FROM instances WHERE path LIKE 'cache/%'"))
            assert cached[0][0] == 6
            pins = node.node.local._pins
            assert pins == {}, "pins are released when the transfer ends"
